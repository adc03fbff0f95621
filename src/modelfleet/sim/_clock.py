"""``SharedClock``: one simulated clock read by two processes (the simulator and its server).

The simulator advances it; a server process started with the same file reads the
same "now". The state is two float64 numbers (wall time as POSIX seconds, and
seconds advanced) in a small memory-mapped file, written by one process only.
"""

from __future__ import annotations

import mmap
import struct
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["SharedClock"]

_LAYOUT = struct.Struct("<dd")


class SharedClock:
    """A manual clock kept in a memory-mapped file; ``advance`` in one process, ``now`` in any.

    Args:
        path: the file holding the state.
        start: the initial time; give it when creating the clock, leave it out to attach to one.
    """

    def __init__(self, path: Path, start: datetime | None = None) -> None:
        self.path = path
        if start is not None:
            if start.tzinfo is None:
                msg = "SharedClock needs a timezone-aware start time"
                raise ValueError(msg)
            path.write_bytes(_LAYOUT.pack(start.timestamp(), 0.0))
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), _LAYOUT.size)
        self._lock = threading.Lock()

    def _read(self) -> tuple[float, float]:
        wall, elapsed = _LAYOUT.unpack(self._map[: _LAYOUT.size])
        return float(wall), float(elapsed)

    def now(self) -> datetime:
        """The clock's current time."""
        return datetime.fromtimestamp(self._read()[0], UTC)

    def monotonic(self) -> float:
        """Seconds advanced since the clock was made."""
        return self._read()[1]

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            msg = f"a clock cannot go backwards (asked to advance {seconds} s)"
            raise ValueError(msg)
        with self._lock:
            wall, elapsed = self._read()
            start = datetime.fromtimestamp(wall, UTC) + timedelta(seconds=seconds)
            self._map[: _LAYOUT.size] = _LAYOUT.pack(start.timestamp(), elapsed + seconds)

    def close(self) -> None:
        """Unmap the file."""
        self._map.close()
        self._file.close()

    def __getstate__(self) -> dict[str, object]:
        """Pickle as the path (a server process attaches to the same file)."""
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        path = state["path"]
        if not isinstance(path, Path):
            msg = "SharedClock state needs a path"
            raise TypeError(msg)
        self.__init__(path)  # type: ignore[misc]
