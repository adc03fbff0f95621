"""Deltas between bundles: which pairs were asked for, which are built, and why some are not.

A delta is keyed by the two bundles' sha256 and the format version it is built in
(:data:`DeltaKey`), so the same delta serves every model name and device that reads
that format (ADR 0010, addendum). States: ``requested`` (a check-in needed it),
``building`` (claimed by one server process; a claim older than the build bound is
taken over), then ``ready`` (the delta blob's sha256 and size), ``skipped`` (built,
but not enough smaller than the full bundle to be worth offering) or ``failed``
(the reason, e.g. over the build time or memory bound). Claims are conditional
updates, so two server processes never build the same delta at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import ColumnElement, Connection, CursorResult, Row, Table, and_, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from modelfleet.store._tables import BundleRow, DeltaRow, EventRow

__all__ = [
    "DeliveryTotals",
    "DeltaKey",
    "DeltaRecord",
    "DeltaStatus",
    "bundle_file",
    "claim_delta",
    "delivery_totals",
    "delta_by_sha256",
    "find_deltas",
    "finish_delta",
    "request_delta",
]

DeltaStatus = Literal["requested", "building", "ready", "skipped", "failed"]
DeltaKey = tuple[str, str, int]
"""(base bundle sha256, target bundle sha256, format version asked of the encoder)."""

_deltas = cast("Table", DeltaRow.__table__)
_bundles = cast("Table", BundleRow.__table__)
_events = cast("Table", EventRow.__table__)


@dataclass(frozen=True, slots=True)
class DeltaRecord:
    """One delta's state; ``sha256``/``size`` are the delta blob's once it is ``ready``."""

    base_sha256: str
    target_sha256: str
    format_version: int
    status: DeltaStatus
    sha256: str | None
    size: int | None
    target_size: int
    codec: str | None
    reason: str | None
    build_seconds: float | None


def _record(row: Row[Any]) -> DeltaRecord:
    return DeltaRecord(**{name: getattr(row, name) for name in DeltaRecord.__slots__})


def bundle_file(connection: Connection, model: str, version: str) -> tuple[str, int] | None:
    """The sha256 and size of a registered bundle version, or ``None``."""
    row = connection.execute(
        select(_bundles.c.sha256, _bundles.c.size).where(_bundles.c.model == model, _bundles.c.version == version)
    ).first()
    return None if row is None else (str(row.sha256), int(row.size))


def find_deltas(connection: Connection, keys: Iterable[DeltaKey]) -> dict[DeltaKey, DeltaRecord]:
    """The recorded state of each (base, target, format version) that has one."""
    wanted = list(keys)
    if not wanted:
        return {}
    key = tuple_(_deltas.c.base_sha256, _deltas.c.target_sha256, _deltas.c.format_version)
    rows = connection.execute(select(_deltas).where(key.in_(wanted)))
    return {(row.base_sha256, row.target_sha256, row.format_version): _record(row) for row in rows}


def delta_by_sha256(connection: Connection, sha256: str) -> list[DeltaRecord]:
    """Ready deltas whose blob has this sha256 (one blob may serve several equal keys)."""
    rows = connection.execute(select(_deltas).where(_deltas.c.sha256 == sha256, _deltas.c.status == "ready"))
    return [_record(row) for row in rows]


def request_delta(connection: Connection, key: DeltaKey, target_size: int, now: datetime) -> bool:
    """Record that a delta is wanted; ``True`` if this call added it (an existing row is left as it is)."""
    base_sha256, target_sha256, format_version = key
    values = {
        "base_sha256": base_sha256, "target_sha256": target_sha256, "format_version": format_version,
        "status": "requested", "target_size": target_size, "requested_at": now,
    }  # fmt: skip
    insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(_deltas)
        .values(values)
        .on_conflict_do_nothing(index_elements=["base_sha256", "target_sha256", "format_version"])
        .returning(_deltas.c.status)  # rowcount of an upsert is not reliable on every driver; RETURNING is
    )
    return connection.execute(statement).first() is not None


def claim_delta(connection: Connection, key: DeltaKey, now: datetime, stale_before: datetime) -> bool:
    """Take a requested delta (or a build claimed before ``stale_before``, whose builder died) for building."""
    claimable = or_(
        _deltas.c.status == "requested",
        and_(_deltas.c.status == "building", _deltas.c.requested_at < stale_before),
    )
    statement = update(_deltas).where(*_is(key), claimable).values(status="building", requested_at=now)
    result = cast("CursorResult[object]", connection.execute(statement))
    return result.rowcount == 1


def finish_delta(
    connection: Connection,
    key: DeltaKey,
    *,
    status: DeltaStatus,
    now: datetime,
    sha256: str | None = None,
    size: int | None = None,
    codec: str | None = None,
    reason: str | None = None,
    build_seconds: float | None = None,
) -> None:
    """Record how a build ended."""
    values = {
        "status": status, "sha256": sha256, "size": size, "codec": codec,
        "reason": None if reason is None else reason[:1024], "build_seconds": build_seconds, "built_at": now,
    }  # fmt: skip
    connection.execute(update(_deltas).where(*_is(key)).values(values))


def _is(key: DeltaKey) -> tuple[ColumnElement[bool], ...]:
    base_sha256, target_sha256, format_version = key
    c = _deltas.c
    return c.base_sha256 == base_sha256, c.target_sha256 == target_sha256, c.format_version == format_version


@dataclass(frozen=True, slots=True)
class DeliveryTotals:
    """How one version reached devices, from their ``installed`` events (ADR 0010)."""

    version: str
    installs: int
    by_delta: int
    bundle_bytes: int
    downloaded_bytes: int

    @property
    def saved_bytes(self) -> int:
        """Bytes deltas kept off the link."""
        return self.bundle_bytes - self.downloaded_bytes


def delivery_totals(connection: Connection, model: str) -> list[DeliveryTotals]:
    """Per version of ``model``: installs, how many came by delta, bundle bytes and bytes actually downloaded.

    A full download counts the bundle's size (plus a refused delta's bytes), a delta install
    the delta, a version the device still kept (a rollback) nothing. Events without a
    ``delivery`` (older agents) count as full downloads.
    """
    sizes = dict(connection.execute(select(_bundles.c.version, _bundles.c.size).where(_bundles.c.model == model)).all())
    rows = connection.execute(
        select(_events.c.version, _events.c.detail).where(_events.c.model == model, _events.c.kind == "installed")
    )
    totals: dict[str, list[int]] = {}
    for version, detail in rows:
        size = sizes.get(version)
        if size is None or (detail or {}).get("role") == "candidate":
            continue
        delivery = (detail or {}).get("delivery")
        delta_bytes = int((detail or {}).get("delta_bytes") or 0)
        entry = totals.setdefault(version, [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += delivery == "delta"
        entry[2] += size
        entry[3] += {"delta": delta_bytes, "kept": 0}.get(str(delivery), size + delta_bytes)
    return [DeliveryTotals(version, *entry) for version, entry in sorted(totals.items())]
