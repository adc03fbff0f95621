"""Telemetry summaries and device events: idempotent batch inserts and per-window aggregation.

A batch is one ``INSERT .. ON CONFLICT (id) DO NOTHING .. RETURNING id`` on
both SQLite and PostgreSQL, so a batch sent twice stores each id once and the
answer still says how many were new. The columns that gates aggregate on sit
beside the full summary document, and ``(model, version, window_start)`` is
indexed, so a per-(model, version, cohort, window) sum is one grouped query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, RowMapping, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelfleet.store._tables import EventRow, SummaryRow
from modelfleet.telemetry import Event, Summary

__all__ = [
    "WindowAggregate",
    "aggregate_windows",
    "insert_events",
    "insert_summaries",
    "list_events",
]

_summaries = cast("Table", SummaryRow.__table__)
_events = cast("Table", EventRow.__table__)


def _insert_new(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping keys already stored; return how many were new."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = [column.name for column in table.primary_key.columns]
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=key).returning(table.c.id)
    return len(conn.execute(statement, list(rows)).all())


def _summary_row(device_id: str, cohort: str | None, summary: Summary, now: datetime) -> dict[str, Any]:
    return {
        "id": summary.id,
        "device_id": device_id,
        "model": summary.model,
        "version": summary.version,
        "role": summary.role,
        "cohort": cohort,
        "window_start": summary.window_start,
        "window_seconds": summary.window_seconds,
        "n": summary.n,
        "errors": summary.errors,
        "fallbacks": summary.fallbacks,
        "timeouts": summary.timeouts,
        "n_labelled": summary.n_labelled,
        "n_correct": summary.n_correct,
        "n_scored": sum(summary.confidence_counts),
        "confidence_sum": summary.confidence_sum,
        "confidence_sum_sq": summary.confidence_sum_sq,
        "latency_sum_ms": summary.latency_sum_ms,
        "body": summary.model_dump(mode="json"),
        "received_at": now,
    }


def insert_summaries(
    conn: Connection, device_id: str, summaries: Sequence[Summary], *, cohort: str | None, now: datetime
) -> int:
    """Store a device's summaries once per id; return how many were new."""
    return _insert_new(conn, _summaries, [_summary_row(device_id, cohort, s, now) for s in summaries])


def _event_row(device_id: str, event: Event, now: datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "device_id": device_id,
        "kind": event.kind,
        "model": event.model,
        "version": event.version,
        "at": event.at,
        "reason": event.reason,
        "detail": dict(event.detail),
        "received_at": now,
    }


def insert_events(conn: Connection, device_id: str, events: Sequence[Event], *, now: datetime) -> int:
    """Store a device's events once per (device, id); return how many were new."""
    return _insert_new(conn, _events, [_event_row(device_id, e, now) for e in events])


def list_events(
    session: Session, *, device_id: str | None = None, kind: str | None = None, limit: int = 100
) -> list[EventRow]:
    """The newest events, optionally of one device or one kind."""
    statement = select(EventRow).order_by(EventRow.at.desc(), EventRow.id).limit(limit)
    if device_id is not None:
        statement = statement.where(EventRow.device_id == device_id)
    if kind is not None:
        statement = statement.where(EventRow.kind == kind)
    return list(session.scalars(statement))


@dataclass(frozen=True, slots=True)
class WindowAggregate:
    """Sums over every summary of one (model, version, cohort, window)."""

    model: str
    version: str
    cohort: str | None
    window_start: datetime
    window_seconds: int
    devices: int
    summaries: int
    n: int
    errors: int
    fallbacks: int
    timeouts: int
    n_labelled: int
    n_correct: int
    n_scored: int
    confidence_sum: float
    confidence_sum_sq: float
    latency_sum_ms: float


def aggregate_windows(
    conn: Connection,
    *,
    model: str,
    version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[WindowAggregate]:
    """Per-(model, version, cohort, window) sums in one grouped query over the indexed columns."""
    s = _summaries
    keys = (s.c.model, s.c.version, s.c.cohort, s.c.window_start, s.c.window_seconds)
    sums = (
        func.sum(s.c[name]).label(name)
        for name in (
            "n",
            "errors",
            "fallbacks",
            "timeouts",
            "n_labelled",
            "n_correct",
            "n_scored",
            "confidence_sum",
            "confidence_sum_sq",
            "latency_sum_ms",
        )
    )
    statement = (
        select(*keys, func.count(s.c.device_id.distinct()).label("devices"), func.count().label("summaries"), *sums)
        .where(s.c.model == model)
        .group_by(*keys)
        .order_by(s.c.window_start, s.c.version, s.c.cohort)
        .limit(limit)
    )
    if version is not None:
        statement = statement.where(s.c.version == version)
    if since is not None:
        statement = statement.where(s.c.window_start >= since)
    if until is not None:
        statement = statement.where(s.c.window_start < until)
    return [_aggregate(row) for row in conn.execute(statement).mappings()]


def _aggregate(row: RowMapping) -> WindowAggregate:
    return WindowAggregate(
        model=row["model"],
        version=row["version"],
        cohort=row["cohort"],
        window_start=row["window_start"],
        window_seconds=row["window_seconds"],
        devices=int(row["devices"]),
        summaries=int(row["summaries"]),
        n=int(row["n"]),
        errors=int(row["errors"]),
        fallbacks=int(row["fallbacks"]),
        timeouts=int(row["timeouts"]),
        n_labelled=int(row["n_labelled"]),
        n_correct=int(row["n_correct"]),
        n_scored=int(row["n_scored"]),
        confidence_sum=float(row["confidence_sum"]),
        confidence_sum_sq=float(row["confidence_sum_sq"]),
        latency_sum_ms=float(row["latency_sum_ms"]),
    )
