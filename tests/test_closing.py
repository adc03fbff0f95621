"""``Closeable``: a ``with`` block closes the object, also when the block raises."""

import pytest

from modelfleet._closing import Closeable


class Counted(Closeable):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_with_block_returns_the_object_and_closes_it_once():
    thing = Counted()
    with thing as entered:
        assert entered is thing
        assert thing.closed == 0
    assert thing.closed == 1


def test_a_block_that_raises_still_closes_and_the_error_goes_on():
    thing = Counted()
    with pytest.raises(KeyError), thing:
        raise KeyError("boom")
    assert thing.closed == 1


def test_a_subclass_must_say_how_it_closes():
    with pytest.raises(NotImplementedError), Closeable():
        pass
