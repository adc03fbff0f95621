"""Last-seen times kept in memory and written in batches, never once per check-in.

goosebit writes ``last_seen`` on every poll, which makes every poll a write;
here a check-in only updates a dict, and a background task writes the newest
time per device with executemany every ``last_seen_flush_seconds`` (and once
more on shutdown), ``FLUSH_CHUNK`` devices per transaction, so the write lock
is never held long enough to stall telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from modelfleet.store import flush_last_seen, write_transaction

__all__ = ["FLUSH_CHUNK", "LastSeenBuffer", "run_flusher"]

FLUSH_CHUNK = 2000

log = logging.getLogger(__name__)


class LastSeenBuffer:
    """The newest check-in time per device since the last flush (thread-safe)."""

    def __init__(self) -> None:
        self._seen: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def note(self, device_id: str, at: datetime) -> None:
        """Remember that ``device_id`` checked in at ``at``."""
        with self._lock:
            self._seen[device_id] = at

    def pending(self) -> int:
        """How many devices wait to be written."""
        with self._lock:
            return len(self._seen)

    def flush(self, engine: Engine) -> int:
        """Write every buffered time, ``FLUSH_CHUNK`` per transaction; return how many devices were written.

        On failure the unwritten times go back into the buffer (unless a newer one arrived meanwhile).
        """
        with self._lock:
            batch, self._seen = self._seen, {}
        items = list(batch.items())
        written = 0
        try:
            for start in range(0, len(items), FLUSH_CHUNK):
                with write_transaction(engine) as connection:
                    written += flush_last_seen(connection, dict(items[start : start + FLUSH_CHUNK]))
        except BaseException:
            with self._lock:
                self._seen = dict(items[written:]) | self._seen
            raise
        return written


async def run_flusher(
    buffer: LastSeenBuffer, engine: Engine, interval: float, on_flush: Callable[[int], object]
) -> None:
    """Flush ``buffer`` every ``interval`` seconds until cancelled; a failed flush is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            on_flush(await asyncio.to_thread(buffer.flush, engine))
        except Exception:
            log.exception("flushing %d last-seen times failed; will retry", buffer.pending())
