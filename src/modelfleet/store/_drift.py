"""What the drift monitor reads: each device's last K windows of one version, its tags, and past drift decisions.

:func:`recent_summaries` is one query on SQLite and PostgreSQL: summaries of
(model, version) since a time, ranked per device by window with ``dense_rank``
(so every summary of a device's K newest windows comes back), limited to a
bounded set of devices and joined to their tags. Only the two count arrays the
monitor needs are taken out of the stored document (``body -> 'feature_counts'``),
not the whole summary. The ``(model, version, window_start)`` index bounds the scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, RowMapping, Table, and_, exists, func, select
from sqlalchemy.orm import Session

from modelfleet.store._tables import AuditEntry, BundleRow, Device, SummaryRow

__all__ = [
    "DeviceSummaries",
    "RecentSummaries",
    "SummaryWindow",
    "last_audit_action",
    "recent_summaries",
    "versions_with_summaries",
]

_summaries = cast("Table", SummaryRow.__table__)
_devices = cast("Table", Device.__table__)
_bundles = cast("Table", BundleRow.__table__)
MAX_WINDOWS = 100


@dataclass(frozen=True, slots=True)
class SummaryWindow:
    """The counts of one stored summary the drift monitor scores."""

    window_start: datetime
    n: int
    feature_counts: tuple[tuple[int, ...], ...]
    confidence_counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeviceSummaries:
    """One device's tags and its newest windows of one version, oldest first."""

    device_id: str
    tags: Mapping[str, Any]
    windows: tuple[SummaryWindow, ...]


@dataclass(frozen=True, slots=True)
class RecentSummaries:
    """The devices that reported a version since a time, each with its last K windows.

    Attributes:
        model: the model.
        version: the version.
        since: the oldest window start read.
        devices: devices by id.
        truncated: more devices reported than the ``max_devices`` bound; the first ones by id were kept.
    """

    model: str
    version: str
    since: datetime
    devices: tuple[DeviceSummaries, ...]
    truncated: bool


def _filters(model: str, version: str, since: datetime, roles: Sequence[str]) -> list[Any]:
    s = _summaries
    return [s.c.model == model, s.c.version == version, s.c.window_start >= since, s.c.role.in_(roles)]


def recent_summaries(
    conn: Connection,
    *,
    model: str,
    version: str,
    since: datetime,
    windows: int,
    max_devices: int,
    roles: Sequence[str] = ("active",),
) -> RecentSummaries:
    """Each device's last ``windows`` windows of (model, version) since ``since``, with its tags, in one query.

    Args:
        conn: a connection.
        model: the model name.
        version: the version whose summaries are read.
        since: windows that started earlier are ignored.
        windows: K, the newest windows kept per device (every summary of those windows is returned).
        max_devices: at most this many devices (the first by id); ``truncated`` says when more reported.
        roles: the summary roles read (the version active by default; add ``shadow`` for candidates).

    Raises:
        ValueError: ``windows`` or ``max_devices`` out of bounds.
    """
    if not 1 <= windows <= MAX_WINDOWS or max_devices < 1:
        msg = f"need 1 <= windows <= {MAX_WINDOWS} and max_devices >= 1"
        raise ValueError(msg)
    s = _summaries
    where = _filters(model, version, since, roles)
    chosen = (
        select(s.c.device_id).where(*where).group_by(s.c.device_id).order_by(s.c.device_id).limit(max_devices + 1)
    ).subquery("chosen")
    rank = func.dense_rank().over(partition_by=s.c.device_id, order_by=s.c.window_start.desc())
    ranked = (
        select(
            s.c.device_id,
            s.c.window_start,
            s.c.n,
            s.c.body["feature_counts"].label("feature_counts"),
            s.c.body["confidence_counts"].label("confidence_counts"),
            rank.label("rank"),
        )
        .where(*where, s.c.device_id.in_(select(chosen.c.device_id)))
        .subquery("ranked")
    )
    statement = (
        select(ranked, _devices.c.tags)
        .outerjoin(_devices, _devices.c.id == ranked.c.device_id)
        .where(ranked.c.rank <= windows)
        .order_by(ranked.c.device_id, ranked.c.window_start)
    )
    devices = _group(conn.execute(statement).mappings())
    truncated = len(devices) > max_devices
    return RecentSummaries(model, version, since, tuple(devices[:max_devices]), truncated)


def _group(rows: Iterable[RowMapping]) -> list[DeviceSummaries]:
    devices: list[DeviceSummaries] = []
    current: str | None = None
    tags: Mapping[str, Any] = {}
    windows: list[SummaryWindow] = []
    for row in rows:
        if row["device_id"] != current:
            if current is not None:
                devices.append(DeviceSummaries(current, tags, tuple(windows)))
            current, tags, windows = row["device_id"], dict(row["tags"] or {}), []
        windows.append(
            SummaryWindow(
                window_start=row["window_start"],
                n=int(row["n"]),
                feature_counts=tuple(tuple(int(c) for c in feature) for feature in row["feature_counts"] or ()),
                confidence_counts=tuple(int(c) for c in row["confidence_counts"] or ()),
            )
        )
    if current is not None:
        devices.append(DeviceSummaries(current, tags, tuple(windows)))
    return devices


def versions_with_summaries(
    conn: Connection, *, since: datetime, limit: int, roles: Sequence[str] = ("active",)
) -> list[tuple[str, str, str | None]]:
    """Registered (model, version, parent) that have summaries since ``since``, by model and release.

    One index probe per registered bundle (``EXISTS`` on the summaries index),
    not a scan of the summaries, so its cost grows with versions, not with telemetry.
    """
    s, b = _summaries, _bundles
    recent = exists().where(and_(s.c.model == b.c.model, s.c.version == b.c.version, *_recent(since, roles)))
    statement = select(b.c.model, b.c.version, b.c.parent).where(recent).order_by(b.c.model, b.c.release).limit(limit)
    return [(row.model, row.version, row.parent) for row in conn.execute(statement)]


def _recent(since: datetime, roles: Sequence[str]) -> list[Any]:
    return [_summaries.c.window_start >= since, _summaries.c.role.in_(roles)]


def last_audit_action(session: Session, *, target: str, actions: Sequence[str]) -> str | None:
    """The action of the newest audit entry on ``target`` among ``actions``, or None when there is none."""
    statement = (
        select(AuditEntry.action)
        .where(AuditEntry.action.in_(actions), AuditEntry.target == target)
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    return session.scalar(statement)
