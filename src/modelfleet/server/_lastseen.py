"""Last-seen times kept in memory and written in batches, never once per check-in.

goosebit writes ``last_seen`` on every poll, which makes every poll a write;
here a check-in only updates a dict, and a background task writes the newest
time per device in one executemany every ``last_seen_flush_seconds`` (and once
more on shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from modelfleet.store import flush_last_seen

__all__ = ["LastSeenBuffer", "run_flusher"]

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
        """Write every buffered time in one transaction; return how many devices were written.

        On failure the times go back into the buffer (unless a newer one arrived meanwhile).
        """
        with self._lock:
            batch, self._seen = self._seen, {}
        if not batch:
            return 0
        try:
            with engine.begin() as connection:
                return flush_last_seen(connection, batch)
        except BaseException:
            with self._lock:
                self._seen = batch | self._seen
            raise


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
