"""Rollouts: the frozen spec, the lifecycle position, and every decision with its numbers.

A transition is one conditional ``UPDATE .. WHERE revision = :seen``: when two
reconcilers (two API replicas, or one restarted mid-tick) decide on the same
revision, exactly one update matches and the other learns it lost. The
decision row (unique per rollout and revision) and the audit entry commit in
the same transaction as the state they record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, select, update
from sqlalchemy.orm import Session

from modelfleet.errors import NotFoundError
from modelfleet.store._audit import append_audit
from modelfleet.store._tables import BundleRow, Device, EventRow, RolloutDecisionRow, RolloutRow, SummaryRow

__all__ = [
    "DeviceWindow",
    "RolloutBundle",
    "StartedRollout",
    "TargetDevice",
    "Transition",
    "apply_transition",
    "create_rollout",
    "find_rollout",
    "list_decisions",
    "list_rollouts",
    "rollout_bundles",
    "started_rollouts",
    "target_devices",
    "update_evaluation",
    "version_events",
    "windows_since",
]

_rollouts = cast("Table", RolloutRow.__table__)


def create_rollout(
    session: Session,
    *,
    rollout_id: str,
    model: str,
    version: str,
    baseline_version: str | None,
    spec: Mapping[str, Any],
    salt: str,
    now: datetime,
    created_by: str | None,
) -> RolloutRow:
    """Store a pending rollout and audit its creation."""
    row = RolloutRow(
        id=rollout_id,
        model=model,
        version=version,
        baseline_version=baseline_version,
        spec=dict(spec),
        salt=salt,
        state="pending",
        stage=-1,
        revision=0,
        created_at=now,
        created_by=created_by,
        updated_at=now,
        planned_devices=0,
        last_evaluation={},
    )
    session.add(row)
    session.flush()
    append_audit(
        session,
        at=now,
        actor=created_by or "unknown",
        action="rollout.create",
        target=rollout_id,
        detail={"model": model, "version": version, "baseline_version": baseline_version},
    )
    return row


def find_rollout(session: Session, rollout_id: str) -> RolloutRow:
    """The rollout with this id.

    Raises:
        NotFoundError: no such rollout.
    """
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        msg = f"no rollout {rollout_id!r}"
        raise NotFoundError(msg, code="unknown_rollout")
    return row


def list_rollouts(
    session: Session, *, model: str | None = None, states: Iterable[str] | None = None, limit: int = 100
) -> list[RolloutRow]:
    """Rollouts, newest first, optionally of one model or in some states."""
    statement = select(RolloutRow).order_by(RolloutRow.created_at.desc(), RolloutRow.id.desc()).limit(limit)
    if model is not None:
        statement = statement.where(RolloutRow.model == model)
    if states is not None:
        statement = statement.where(RolloutRow.state.in_(list(states)))
    return list(session.scalars(statement))


def list_decisions(session: Session, rollout_id: str) -> list[RolloutDecisionRow]:
    """Every transition of a rollout, oldest first."""
    statement = (
        select(RolloutDecisionRow)
        .where(RolloutDecisionRow.rollout_id == rollout_id)
        .order_by(RolloutDecisionRow.revision)
    )
    return list(session.scalars(statement))


@dataclass(frozen=True, slots=True)
class Transition:
    """A decided move of one rollout from the revision it was decided on."""

    rollout_id: str
    seen_revision: int
    event: str
    from_state: str
    to_state: str
    stage: int
    resume_state: str | None
    actor: str
    reason: str
    detail: Mapping[str, Any]
    new_stage_started: bool = False
    planned_devices: int | None = None


def apply_transition(session: Session, transition: Transition, *, now: datetime) -> bool:
    """Apply ``transition`` if the rollout is still at the revision it was decided on.

    Returns:
        True when applied (decision row and audit entry written in this transaction),
        False when another decision got there first.
    """
    values: dict[str, Any] = {
        "state": transition.to_state,
        "stage": transition.stage,
        "resume_state": transition.resume_state,
        "revision": transition.seen_revision + 1,
        "updated_at": now,
    }
    if transition.event == "start":
        values["started_at"] = now
    if transition.new_stage_started:
        values["stage_started_at"] = now
    if transition.planned_devices is not None:
        values["planned_devices"] = transition.planned_devices
    result = session.execute(
        update(_rollouts)
        .where(_rollouts.c.id == transition.rollout_id, _rollouts.c.revision == transition.seen_revision)
        .values(**values)
    )
    if cast("CursorResult[Any]", result).rowcount != 1:
        return False
    session.add(
        RolloutDecisionRow(
            rollout_id=transition.rollout_id,
            revision=transition.seen_revision + 1,
            at=now,
            actor=transition.actor,
            event=transition.event,
            from_state=transition.from_state,
            to_state=transition.to_state,
            stage=transition.stage,
            reason=transition.reason[:2048],
            detail=dict(transition.detail),
        )
    )
    append_audit(
        session,
        at=now,
        actor=transition.actor,
        action=f"rollout.{transition.event}",
        target=transition.rollout_id,
        detail={
            "from": transition.from_state,
            "to": transition.to_state,
            "stage": transition.stage,
            "reason": transition.reason[:2048],
            **dict(transition.detail),
        },
    )
    session.expire_all()
    return True


def update_evaluation(session: Session, rollout_id: str, seen_revision: int, evaluation: Mapping[str, Any]) -> bool:
    """Store the latest evaluation of a rollout that did not move (a hold); False if it moved meanwhile."""
    result = session.execute(
        update(_rollouts)
        .where(_rollouts.c.id == rollout_id, _rollouts.c.revision == seen_revision)
        .values(last_evaluation=dict(evaluation))
    )
    return cast("CursorResult[Any]", result).rowcount == 1


@dataclass(frozen=True, slots=True)
class RolloutBundle:
    """The artifact facts a check-in answer needs for one version."""

    version: str
    release: int
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class StartedRollout:
    """What the check-in path needs of a started rollout."""

    id: str
    model: str
    state: str
    stage: int
    salt: str
    spec: Mapping[str, Any]
    new: RolloutBundle
    baseline: RolloutBundle | None
    created_at: datetime


def rollout_bundles(conn: Connection, model: str, versions: Iterable[str]) -> dict[str, RolloutBundle]:
    """Release, sha256 and size of some versions of a model."""
    names = sorted({v for v in versions if v})
    if not names:
        return {}
    rows = conn.execute(
        select(BundleRow.version, BundleRow.release, BundleRow.sha256, BundleRow.size).where(
            BundleRow.model == model, BundleRow.version.in_(names)
        )
    )
    return {row.version: RolloutBundle(row.version, row.release, row.sha256, row.size) for row in rows}


def started_rollouts(conn: Connection) -> list[StartedRollout]:
    """Every rollout that has started, newest first, with its bundles (what check-ins resolve against)."""
    rows = conn.execute(
        select(
            _rollouts.c.id,
            _rollouts.c.model,
            _rollouts.c.version,
            _rollouts.c.baseline_version,
            _rollouts.c.state,
            _rollouts.c.stage,
            _rollouts.c.salt,
            _rollouts.c.spec,
            _rollouts.c.created_at,
        )
        .where(_rollouts.c.state != "pending")
        .order_by(_rollouts.c.created_at.desc(), _rollouts.c.id.desc())
    )
    found: list[StartedRollout] = []
    for row in rows:
        bundles = rollout_bundles(conn, row.model, (row.version, row.baseline_version or ""))
        new = bundles.get(row.version)
        if new is None:
            continue
        found.append(
            StartedRollout(
                row.id,
                row.model,
                row.state,
                row.stage,
                row.salt,
                row.spec or {},
                new,
                bundles.get(row.baseline_version or ""),
                row.created_at,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class TargetDevice:
    """An accepted device: its tags and what it reports installed."""

    id: str
    tags: Mapping[str, str]
    installed: tuple[Mapping[str, Any], ...]


def target_devices(session: Session) -> list[TargetDevice]:
    """Every accepted device with its tags and installed versions (the reconciler filters by selector)."""
    rows = session.execute(
        select(Device.id, Device.tags, Device.installed).where(Device.status == "accepted").order_by(Device.id)
    )
    return [TargetDevice(row.id, row.tags or {}, tuple(row.installed or ())) for row in rows]


@dataclass(frozen=True, slots=True)
class DeviceWindow:
    """One active-role telemetry window of one device, reduced to what gates compute on."""

    device_id: str
    version: str
    window_start: datetime
    window_seconds: int
    n: int
    errors: int
    fallbacks: int
    timeouts: int
    n_labelled: int
    n_correct: int
    n_scored: int
    confidence_sum: float
    latency_sum_ms: float


def windows_since(session: Session, model: str, versions: Iterable[str], since: datetime) -> list[DeviceWindow]:
    """Active-role windows of ``model`` at ``versions`` starting at or after ``since``, oldest first."""
    s = SummaryRow
    rows = session.execute(
        select(
            s.device_id,
            s.version,
            s.window_start,
            s.window_seconds,
            s.n,
            s.errors,
            s.fallbacks,
            s.timeouts,
            s.n_labelled,
            s.n_correct,
            s.n_scored,
            s.confidence_sum,
            s.latency_sum_ms,
        )
        .where(s.model == model, s.version.in_(sorted(set(versions))), s.window_start >= since, s.role == "active")
        .order_by(s.window_start, s.device_id)
    )
    return [DeviceWindow(**row._asdict()) for row in rows]


def version_events(session: Session, model: str, version: str, since: datetime) -> list[tuple[str, str]]:
    """(device id, event kind) of every event about ``model`` at ``version`` since ``since``."""
    rows = session.execute(
        select(EventRow.device_id, EventRow.kind).where(
            EventRow.model == model, EventRow.version == version, EventRow.at >= since
        )
    )
    return [(row.device_id, row.kind) for row in rows]
