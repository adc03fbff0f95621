"""The local outbox: summaries and events wait in SQLite until the server has them (store and forward).

An item is committed (WAL, ``synchronous=FULL``: fsynced) before :meth:`Outbox.add`
returns, so nothing acknowledged is lost to a crash, a power cut or a restart.
Items are keyed by their id and inserted with ``INSERT OR IGNORE``, so offering
the same summary or event twice stores it once; sent items stay behind as
tombstones (until space is needed), so an id already delivered is not queued
again. The outbox is bounded by item count and bytes: when full, the oldest sent
items go first, then the oldest unsent ones, and every unsent item dropped is
counted per kind (persistently) and logged, never dropped silently.
Running totals live in a table that triggers keep in the same transaction, so
several processes may share one outbox file.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelfleet._closing import Closeable
from modelfleet.errors import StoreError, TooLargeError
from modelfleet.telemetry import Event, Summary

__all__ = ["Outbox", "OutboxCounts", "OutboxItem", "OutboxKind"]

logger = logging.getLogger(__name__)

OutboxKind = Literal["summary", "event"]
_SCHEMA_VERSION = 1
_ID_CHUNK = 500  # below SQLite's smallest default limit on bound parameters
_EVICT_BATCH = 64
_COUNT_DROPPED = "INSERT INTO dropped (kind, count) VALUES (?, 1) ON CONFLICT (kind) DO UPDATE SET count = count + 1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('summary', 'event')),
    body TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0 CHECK (sent IN (0, 1))
);
CREATE INDEX IF NOT EXISTS items_eviction_order ON items (sent DESC, seq);
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    items INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (one, items, bytes) VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS items_added AFTER INSERT ON items BEGIN
    UPDATE totals SET items = items + 1, bytes = bytes + length(CAST(NEW.body AS BLOB));
END;
CREATE TRIGGER IF NOT EXISTS items_removed AFTER DELETE ON items BEGIN
    UPDATE totals SET items = items - 1, bytes = bytes - length(CAST(OLD.body AS BLOB));
END;
CREATE TABLE IF NOT EXISTS dropped (
    kind TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One stored summary or event: its id, kind and JSON body."""

    id: str
    kind: OutboxKind
    body: str


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """What the outbox holds, and how many unsent items it ever had to drop, per kind."""

    pending: int
    sent: int
    bytes: int
    dropped: dict[str, int]


class Outbox(Closeable):
    """A bounded, crash-safe SQLite outbox of summaries and events; thread-safe.

    Args:
        path: the database file (created with its directory if missing).
        max_items: items kept at most, sent tombstones included.
        max_bytes: JSON bytes kept at most.

    Raises:
        ValueError: non-positive bounds.
        StoreError: ``outbox_schema`` when the file was written by a newer outbox.
    """

    def __init__(self, path: Path, *, max_items: int = 10_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        if max_items < 1 or max_bytes < 1:
            msg = f"outbox bounds must be positive, got max_items={max_items}, max_bytes={max_bytes}"
            raise ValueError(msg)
        self.path = path
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            raise

    def add_summary(self, summary: Summary) -> bool:
        """Store a summary; ``False`` when its id is already stored."""
        return self.add("summary", summary.id, summary.model_dump_json())

    def add_event(self, event: Event) -> bool:
        """Store an event; ``False`` when its id is already stored."""
        return self.add("event", event.id, event.model_dump_json())

    def add(self, kind: OutboxKind, item_id: str, body: str) -> bool:
        """Store one item durably, evicting the oldest items when full; ``False`` for a known id.

        Raises:
            TooLargeError: ``outbox_item_too_large`` when the body alone exceeds ``max_bytes``.
        """
        size = len(body.encode())
        if size > self._max_bytes:
            msg = f"{kind} {item_id} is {size} bytes; the outbox holds at most {self._max_bytes}"
            raise TooLargeError(msg, code="outbox_item_too_large")
        with self._transaction() as db:
            added = db.execute("INSERT OR IGNORE INTO items (id, kind, body) VALUES (?, ?, ?)", (item_id, kind, body))
            if added.rowcount:
                self._evict(db)
        return bool(added.rowcount)

    def pending(self, limit: int = 100, kind: OutboxKind | None = None) -> list[OutboxItem]:
        """The oldest unsent items (of ``kind``, if given), oldest first."""
        query = "SELECT id, kind, body FROM items WHERE sent = 0 AND (? IS NULL OR kind = ?) ORDER BY seq LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (kind, kind, limit)).fetchall()
        return [OutboxItem(item_id, item_kind, body) for item_id, item_kind, body in rows]

    def mark_sent(self, ids: Iterable[str]) -> int:
        """Mark items the server acknowledged; returns how many were newly marked."""
        wanted = list(dict.fromkeys(ids))
        marked = 0
        with self._transaction() as db:
            for start in range(0, len(wanted), _ID_CHUNK):
                chunk = wanted[start : start + _ID_CHUNK]
                marks = ", ".join("?" * len(chunk))
                marked += db.execute(f"UPDATE items SET sent = 1 WHERE sent = 0 AND id IN ({marks})", chunk).rowcount  # noqa: S608 - only placeholders are interpolated
        return marked

    def counts(self) -> OutboxCounts:
        """Pending, sent and stored bytes, and the unsent items dropped so far per kind."""
        with self._lock:
            by_state = dict(self._db.execute("SELECT sent, COUNT(*) FROM items GROUP BY sent").fetchall())
            (stored_bytes,) = self._db.execute("SELECT bytes FROM totals").fetchone()
            dropped = dict(self._db.execute("SELECT kind, count FROM dropped ORDER BY kind").fetchall())
        return OutboxCounts(by_state.get(0, 0), by_state.get(1, 0), stored_bytes, dropped)

    def close(self) -> None:
        """Close the database; everything added is already on disk."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ internals

    def _prepare(self) -> None:
        """Set durability pragmas and create or check the schema."""
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                msg = f"{self.path} was written by a newer outbox (schema {version}, this one reads {_SCHEMA_VERSION})"
                raise StoreError(msg, code="outbox_schema")
            for statement in _statements(_SCHEMA):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so eviction sees the totals it changes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _evict(self, db: sqlite3.Connection) -> None:
        """Delete the oldest items (sent ones first) until both bounds hold; count unsent ones dropped."""
        while True:
            items, stored = db.execute("SELECT items, bytes FROM totals").fetchone()
            if items <= self._max_items and stored <= self._max_bytes:
                return
            oldest = db.execute(
                "SELECT seq, id, kind, sent FROM items ORDER BY sent DESC, seq LIMIT ?", (_EVICT_BATCH,)
            ).fetchall()
            self._delete_until_within(db, oldest)

    def _delete_until_within(self, db: sqlite3.Connection, oldest: list[tuple[int, str, str, int]]) -> None:
        for seq, item_id, kind, sent in oldest:
            db.execute("DELETE FROM items WHERE seq = ?", (seq,))
            if not sent:
                db.execute(_COUNT_DROPPED, (kind,))
                logger.warning("outbox %s full: dropped unsent %s %s", self.path, kind, item_id)
            items, stored = db.execute("SELECT items, bytes FROM totals").fetchone()
            if items <= self._max_items and stored <= self._max_bytes:
                return


def _statements(script: str) -> list[str]:
    """Split the schema script into statements (triggers hold ``;`` inside ``BEGIN ... END``)."""
    statements: list[str] = []
    current = ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements
