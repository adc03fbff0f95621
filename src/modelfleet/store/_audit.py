"""The audit log: who did what to what, and when; append-only and hash-chained.

Each entry's ``hash`` is sha256 over the previous entry's hash and the entry's
canonical content (time, actor, action, target, detail), so editing, deleting
or reordering an entry breaks the chain at that point and
:func:`verify_audit_chain` names it. Appends are serialized: on PostgreSQL by a
transaction-scoped advisory lock, on SQLite by its single writer, and
``prev_hash`` is unique as a last line of defence against a forked chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from modelfleet.store._tables import AuditEntry

__all__ = ["GENESIS", "AuditChainCheck", "append_audit", "audit_hash", "list_audit", "verify_audit_chain"]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""
_APPEND_LOCK_KEY = 0x6D66_6175_6474  # "mfaudt": one appender at a time on PostgreSQL


def audit_hash(prev_hash: str, *, at: datetime, actor: str, action: str, target: str | None, detail: Any) -> str:  # noqa: ANN401 - JSON
    """sha256 of the previous hash and the entry's canonical JSON content."""
    content = {
        "prev": prev_hash,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "target": target,
        "detail": detail,
    }
    text_ = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text_.encode("utf-8")).hexdigest()


def _tail(session: Session) -> str:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
    last = session.scalar(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1))
    return last or GENESIS


def append_audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction, so it commits with the change it records."""
    document = json.loads(json.dumps(dict(detail or {}), allow_nan=False))  # what the JSON column gives back
    at = at.astimezone(UTC)
    prev = _tail(session)
    entry = AuditEntry(
        at=at,
        actor=actor,
        action=action,
        target=target,
        detail=document,
        prev_hash=prev,
        hash=audit_hash(prev, at=at, actor=actor, action=action, target=target, detail=document),
    )
    session.add(entry)
    session.flush()
    return entry


def list_audit(session: Session, *, action: str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, optionally of one action."""
    statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action is not None:
        statement = statement.where(AuditEntry.action == action)
    return list(session.scalars(statement))


@dataclass(frozen=True, slots=True)
class AuditChainCheck:
    """Whether the chain holds, how many entries were checked, and the first broken entry."""

    ok: bool
    entries: int
    broken_at: int | None = None
    reason: str | None = None


def verify_audit_chain(session: Session, *, batch: int = 1000) -> AuditChainCheck:
    """Recompute the chain from the first entry; report the first entry that does not fit."""
    prev, checked, last_id = GENESIS, 0, 0
    total = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    while True:
        rows = list(
            session.scalars(select(AuditEntry).where(AuditEntry.id > last_id).order_by(AuditEntry.id).limit(batch))
        )
        if not rows:
            return AuditChainCheck(ok=checked == total, entries=checked)
        for row in rows:
            if row.prev_hash != prev:
                return AuditChainCheck(
                    ok=False,
                    entries=checked,
                    broken_at=row.id,
                    reason="its prev_hash does not name the entry before it",
                )
            expected = audit_hash(
                prev, at=row.at, actor=row.actor, action=row.action, target=row.target, detail=row.detail
            )
            if row.hash != expected:
                return AuditChainCheck(
                    ok=False, entries=checked, broken_at=row.id, reason="its content does not match its hash"
                )
            prev, checked, last_id = expected, checked + 1, row.id


def _broken(row: AuditEntry, prev: str) -> str | None:
    """Why ``row`` does not continue a chain whose last hash is ``prev``, or None."""
    if row.prev_hash != prev:
        return "its prev_hash does not name the entry before it"
    expected = audit_hash(prev, at=row.at, actor=row.actor, action=row.action, target=row.target, detail=row.detail)
    if row.hash != expected:
        return "its content does not match its hash"
    return None
