"""``Closeable``: what every resource-holding class shares, so ``with thing:`` closes it on the way out."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closeable"]


class Closeable:
    """A base for classes that release something in :meth:`close`; a ``with`` block closes them when it ends."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object holds; safe to call more than once."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
