"""Admin API of rollouts: plan, create, start, approve, pause, resume, abort, roll back, status.

Every command goes through the rollout state table (``modelfleet.rollout``) and
is refused with 409 ``bad_transition`` where the table does not allow it. A
spec whose power analysis cannot detect its margins is refused at start with
409 ``plan_infeasible`` and the reasons, unless ``force`` is given; then the
warning is written to the audit log with the start.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from modelfleet.errors import ConflictError
from modelfleet.rollout import (
    Event,
    Reconciler,
    RolloutPlan,
    RolloutSpec,
    baseline_version,
    metric_value,
    new_rollout,
    plan_rollout,
    run_command,
)
from modelfleet.rollout import is_lab as is_lab_device
from modelfleet.server._auth import Admin, ReleaseManager, Viewer, actor_of
from modelfleet.server._body import json_body, request_body
from modelfleet.server._state import State
from modelfleet.store import (
    AdminPrincipal,
    DeviceWindow,
    RolloutRow,
    append_audit,
    find_bundle,
    find_rollout,
    list_decisions,
    list_rollouts,
    selector_matches,
    target_devices,
    windows_since,
)

__all__ = ["BODY_MODELS", "RolloutOut", "rollout_router"]

ROLLOUT_ID = r"^ro-[0-9a-f]{10}$"
RolloutId = Annotated[str, Path(pattern=ROLLOUT_ID)]
SpecBody = Annotated[RolloutSpec, Depends(json_body(RolloutSpec))]
Force = Annotated[bool, Query(description="start even if the power analysis says the plan cannot detect its margins")]
BODY_MODELS = (RolloutSpec,)
_FLEET_SD_WINDOW = timedelta(days=1)
_MIN_DEVICES_FOR_SD = 10

rollout_router = APIRouter(prefix="/v1/admin/rollouts", tags=["rollouts"])


class DecisionOut(BaseModel):
    """One transition with its numbers."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    revision: int
    at: datetime
    actor: str
    event: str
    from_state: str
    to_state: str
    stage: int
    reason: str
    detail: dict[str, Any]


class RolloutOut(BaseModel):
    """A rollout: spec, position, the latest evaluation and every decision so far."""

    model_config = ConfigDict(frozen=True)

    id: str
    model: str
    version: str
    baseline_version: str | None
    state: str
    stage: int
    stages: int
    percent: float
    revision: int
    created_at: datetime
    created_by: str | None
    started_at: datetime | None
    stage_started_at: datetime | None
    planned_devices: int
    spec: dict[str, Any]
    last_evaluation: dict[str, Any]
    decisions: list[DecisionOut]

    @classmethod
    def of(cls, session: Session, row: RolloutRow) -> RolloutOut:
        """Build from a row and its decisions."""
        stages = row.spec.get("stages") or []
        percent = float(stages[row.stage]["percent"]) if 0 <= row.stage < len(stages) else 0.0
        if row.state == "complete":
            percent = 100.0
        return cls(
            id=row.id, model=row.model, version=row.version, baseline_version=row.baseline_version, state=row.state,
            stage=row.stage, stages=len(stages), percent=percent, revision=row.revision, created_at=row.created_at,
            created_by=row.created_by, started_at=row.started_at, stage_started_at=row.stage_started_at,
            planned_devices=row.planned_devices, spec=row.spec, last_evaluation=row.last_evaluation or {},
            decisions=[DecisionOut.model_validate(d) for d in list_decisions(session, row.id)],
        )  # fmt: skip


def _fleet_sd(session: Session, spec: RolloutSpec, baseline: str | None, now: datetime) -> dict[str, float]:
    """Device-level sd of each gate metric on the baseline over the last day (what the fleet shows now)."""
    if baseline is None:
        return {}
    per_device: dict[str, list[DeviceWindow]] = defaultdict(list)
    for window in windows_since(session, spec.model, [baseline], now - _FLEET_SD_WINDOW):
        per_device[window.device_id].append(window)
    measured: dict[str, float] = {}
    for gate in spec.gates:
        values = [v for w in per_device.values() if (v := metric_value(gate.metric, w)) is not None]
        if len(values) >= _MIN_DEVICES_FOR_SD:
            measured[gate.metric] = statistics.stdev(values)
    return measured


def _plan(session: Session, spec: RolloutSpec, baseline: str | None, now: datetime) -> RolloutPlan:
    targets = [
        d for d in target_devices(session) if selector_matches(spec.selector, d.tags) and not is_lab_device(d.tags)
    ]
    return plan_rollout(spec, target_devices=len(targets), measured_sd=_fleet_sd(session, spec, baseline, now))


def _reconciler(request: Request) -> Reconciler:
    reconciler: Reconciler = request.app.state.reconciler
    return reconciler


def _changed(request: Request) -> None:
    """Let this process's check-ins see the change at once."""
    invalidate = getattr(request.app.state, "invalidate_rollouts", None)
    if invalidate is not None:
        invalidate()


@rollout_router.post("/plan", openapi_extra=request_body(RolloutSpec))
def plan(spec: SpecBody, _: Viewer, state: State) -> dict[str, Any]:
    """The power analysis of a spec on the fleet as it is now; nothing is stored."""
    with state.transaction() as session:
        bundle = find_bundle(session, spec.model, spec.version)
        return _plan(session, spec, baseline_version(session, bundle), state.clock.now()).as_dict()


@rollout_router.post("", response_model=RolloutOut, status_code=201, openapi_extra=request_body(RolloutSpec))
def create(spec: SpecBody, principal: Admin, state: State, request: Request, force: Force = False) -> RolloutOut:
    """Create a rollout from a spec and start it (the spec is frozen from here on)."""
    now = state.clock.now()
    with state.transaction() as session:
        row = new_rollout(session, spec, now=now, actor=actor_of(principal))
        _start(session, row, spec, role=principal.role, actor=actor_of(principal), now=now, force=force)
        out = RolloutOut.of(session, row)
    _changed(request)
    return out


def _start(
    session: Session, row: RolloutRow, spec: RolloutSpec, *, role: str, actor: str, now: datetime, force: bool
) -> None:
    planned = _plan(session, spec, row.baseline_version, now)
    problems = planned.problems()
    if problems and not force:
        msg = "the plan cannot detect its margins: " + "; ".join(problems) + " (start with force to override)"
        raise ConflictError(msg, code="plan_infeasible")
    if problems:
        append_audit(
            session, at=now, actor=actor, action="rollout.plan_forced", target=row.id, detail={"problems": problems}
        )
    run_command(session, row.id, Event.START, actor=actor, role=role, now=now, reason="started")


@rollout_router.get("", response_model=list[RolloutOut])
def rollouts(
    _: Viewer,
    state: State,
    model: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RolloutOut]:
    """Rollouts, newest first."""
    with state.transaction() as session:
        return [RolloutOut.of(session, row) for row in list_rollouts(session, model=model, limit=limit)]


@rollout_router.get("/{rollout_id}", response_model=RolloutOut)
def rollout(rollout_id: RolloutId, _: Viewer, state: State) -> RolloutOut:
    """One rollout with its latest evaluation and decisions."""
    with state.transaction() as session:
        return RolloutOut.of(session, find_rollout(session, rollout_id))


def _command(event: Event, rollout_id: str, principal: AdminPrincipal, state: State, request: Request) -> RolloutOut:
    with state.transaction() as session:
        row = run_command(
            session, rollout_id, event, actor=actor_of(principal), role=principal.role, now=state.clock.now()
        )
        out = RolloutOut.of(session, row)
    _changed(request)
    return out


@rollout_router.post("/{rollout_id}/approve", response_model=RolloutOut)
def approve(rollout_id: RolloutId, principal: ReleaseManager, state: State, request: Request) -> RolloutOut:
    """Approve the next stage of a rollout waiting for it (by the role its spec names)."""
    return _command(Event.APPROVE, rollout_id, principal, state, request)


@rollout_router.post("/{rollout_id}/pause", response_model=RolloutOut)
def pause(rollout_id: RolloutId, principal: Admin, state: State, request: Request) -> RolloutOut:
    """Freeze a rollout where it is: treated devices stay treated, no stage widens."""
    return _command(Event.PAUSE, rollout_id, principal, state, request)


@rollout_router.post("/{rollout_id}/resume", response_model=RolloutOut)
def resume(rollout_id: RolloutId, principal: Admin, state: State, request: Request) -> RolloutOut:
    """Resume a paused rollout where it paused."""
    return _command(Event.RESUME, rollout_id, principal, state, request)


@rollout_router.post("/{rollout_id}/abort", response_model=RolloutOut)
def abort(rollout_id: RolloutId, principal: Admin, state: State, request: Request) -> RolloutOut:
    """Stop a rollout for good; its target returns to the baseline."""
    return _command(Event.ABORT, rollout_id, principal, state, request)


@rollout_router.post("/{rollout_id}/rollback", response_model=RolloutOut)
def rollback(rollout_id: RolloutId, principal: Admin, state: State, request: Request) -> RolloutOut:
    """Return every target device to the baseline, even after completion (the agents accept the lower release)."""
    return _command(Event.ROLLBACK, rollout_id, principal, state, request)


@rollout_router.post("/reconcile")
def reconcile(_: Admin, request: Request) -> dict[str, list[str]]:
    """Look at every running rollout now instead of at the next scheduled look."""
    moved = _reconciler(request).tick()
    if moved:
        _changed(request)
    return {"moved": moved}
