"""The inline worker's watchdog reuses a run's options only when no terminate can reach them any more."""

import time

import pytest

from modelfleet.agent._inline import _Watchdog


@pytest.fixture
def watchdog():
    """``watchdog(tick_s)``; every watchdog is closed after the test."""
    made = []

    def start(tick_s):
        made.append(_Watchdog(tick_s, "test"))
        return made[-1]

    yield start
    for each in made:
        each.close()


def test_a_run_that_ended_in_time_hands_its_options_to_the_next(watchdog):
    dog = watchdog(1.0)
    first = dog.begin(10.0)
    dog.end(first)

    second = dog.begin(10.0)

    assert second is first
    assert not second.terminate


def test_a_terminated_run_never_hands_its_options_on(watchdog):
    dog = watchdog(0.005)
    late = dog.begin(0.01)
    deadline = time.monotonic() + 5.0
    while not late.terminate:
        assert time.monotonic() < deadline, "the watchdog never terminated the late run"
        time.sleep(0.005)
    dog.end(late)

    after = dog.begin(10.0)

    assert after is not late
    assert not after.terminate


def test_a_run_that_ended_past_its_deadline_never_hands_its_options_on(watchdog):
    # The watchdog may have listed the run just before it ended and set its flag after: never reuse it.
    dog = watchdog(10.0)
    late = dog.begin(0.0)
    dog.end(late)

    assert dog.begin(10.0) is not late


def test_runs_at_once_each_get_their_own_options(watchdog):
    dog = watchdog(1.0)
    first, second = dog.begin(10.0), dog.begin(10.0)
    assert first is not second
    dog.end(first)
    dog.end(second)

    again = {id(dog.begin(10.0)), id(dog.begin(10.0)), id(dog.begin(10.0))}

    assert {id(first), id(second)} < again
