"""An injectable clock: real time in production, controlled time in tests and the simulator."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "format_timestamp"]


class Clock(Protocol):
    """Where modelfleet reads the time from."""

    def now(self) -> datetime:
        """Return the current wall-clock time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Return seconds from an arbitrary origin that never go backwards."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to; thread-safe.

    Args:
        start: the initial wall-clock time (must be timezone-aware).
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            msg = "ManualClock needs a timezone-aware start time"
            raise ValueError(msg)
        self._now = start.astimezone(UTC)
        self._elapsed = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the clock's current time."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """Return seconds advanced since the clock was made."""
        with self._lock:
            return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            msg = f"a clock cannot go backwards (asked to advance {seconds} s)"
            raise ValueError(msg)
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._elapsed += seconds


def format_timestamp(moment: datetime) -> str:
    """Render an aware datetime as RFC 3339 UTC with second precision (``...Z``)."""
    if moment.tzinfo is None:
        msg = "timestamps must be timezone-aware"
        raise ValueError(msg)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
