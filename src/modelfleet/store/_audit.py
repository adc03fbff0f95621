"""The audit log: who did what to what, and when (append-only)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.store._tables import AuditEntry

__all__ = ["append_audit", "list_audit"]


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
    entry = AuditEntry(at=at, actor=actor, action=action, target=target, detail=dict(detail or {}))
    session.add(entry)
    return entry


def list_audit(session: Session, *, action: str | None = None, limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, optionally of one action."""
    statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action is not None:
        statement = statement.where(AuditEntry.action == action)
    return list(session.scalars(statement))
