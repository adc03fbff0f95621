"""The reconciler: looks at every running rollout on the server clock and moves it by the table.

Each look at one rollout is one transaction: read the rollout at revision r,
decide from telemetry and events, and apply the decision only if the rollout
is still at r (:func:`modelfleet.store.apply_transition`). A restart, or a
second server process running the same look, therefore never decides twice,
and every decision is written with its numbers to ``rollout_decisions`` and the
hash-chained audit log in the transaction that makes it.

Operators' commands (start, approve, pause, resume, abort, rollback) go through
the same table and the same conditional update.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfleet.clock import Clock
from modelfleet.errors import ConflictError, NotFoundError, PermissionDeniedError
from modelfleet.rollout._cohort import Cohort, assign, is_lab, treated_share
from modelfleet.rollout._evaluate import StageEvaluation, device_values, evaluate_stage
from modelfleet.rollout._spec import RolloutSpec, Stage, parse_spec
from modelfleet.rollout._states import ACTIVE, TERMINAL, Event, Position, RolloutState, transition
from modelfleet.store import (
    Alias,
    BundleRow,
    ExperimentRow,
    RolloutRow,
    TargetDevice,
    Transition,
    append_audit,
    apply_transition,
    create_rollout,
    find_bundle,
    find_rollout,
    selector_matches,
    set_alias,
    target_devices,
    update_evaluation,
    version_events,
    windows_since,
)

__all__ = ["FAILURE_EVENTS", "Decision", "Reconciler", "baseline_version", "decide", "new_rollout", "run_command"]

log = logging.getLogger(__name__)

FAILURE_EVENTS = frozenset({"install_failed", "verify_failed", "health_failed", "rolled_back", "crash_loop"})
"""Device events that count against a version in the hard triggers (transport failures do not)."""
SUCCESS_EVENTS = frozenset({"health_passed", "committed"})
_LOOKED_AT = frozenset({*ACTIVE, RolloutState.ROLLING_BACK})
ROLES_FOR_APPROVAL = {"admin": {"admin"}, "release-manager": {"admin", "release-manager"}}


@dataclass(frozen=True, slots=True)
class Decision:
    """What one look decided: an event (or None to hold), why, and the numbers."""

    event: Event | None
    reason: str
    detail: Mapping[str, Any]


def _spec(row: RolloutRow) -> RolloutSpec:
    return parse_spec(row.spec)


def _position(row: RolloutRow) -> Position:
    resume = RolloutState(row.resume_state) if row.resume_state else None
    return Position(RolloutState(row.state), row.stage, resume)


def _approvals(spec: RolloutSpec) -> tuple[bool, ...]:
    return tuple(stage.approval is not None for stage in spec.stages)


def _targets(session: Session, spec: RolloutSpec) -> list[TargetDevice]:
    return [device for device in target_devices(session) if selector_matches(spec.selector, device.tags)]


def _percent(spec: RolloutSpec, stage: int) -> float:
    return spec.stages[stage].percent if stage >= 0 else 0.0


def _cohorts(row: RolloutRow, spec: RolloutSpec, devices: Sequence[TargetDevice], stage: int) -> dict[str, Cohort]:
    percent = _percent(spec, stage)
    return {
        d.id: assign(row.salt, d.id, d.tags, holdout_percent=spec.holdout_percent, percent=percent) for d in devices
    }


def _compared(cohorts: Mapping[str, Cohort]) -> int:
    return sum(1 for cohort in cohorts.values() if cohort in {Cohort.TREATED, Cohort.HOLDOUT})


def new_rollout(
    session: Session, spec: RolloutSpec, *, now: datetime, actor: str, salt: str | None = None
) -> RolloutRow:
    """Create a pending rollout of ``spec`` against the model's current ``stable`` version.

    The baseline (what holdout devices keep, and where a rollback returns) is
    the ``stable`` alias if set, else the newest unyanked release below the new one.
    ``salt`` seeds the cohort hashing (default: a fresh random one; tests pass their own).

    Raises:
        NotFoundError: the model or version does not exist.
        ConflictError: the version is yanked, or the model has a rollout still running.
    """
    bundle = find_bundle(session, spec.model, spec.version)
    if bundle.yanked_at is not None:
        msg = f"{spec.model} {spec.version} is yanked and cannot be rolled out"
        raise ConflictError(msg, code="yanked")
    running = session.scalar(
        select(RolloutRow.id).where(
            RolloutRow.model == spec.model, RolloutRow.state.not_in([s.value for s in TERMINAL])
        )
    )
    if running is not None:
        msg = f"{spec.model} already has rollout {running} in progress; finish, abort or roll it back first"
        raise ConflictError(msg, code="rollout_in_progress")
    experiment = session.scalar(
        select(ExperimentRow.id).where(ExperimentRow.model == spec.model, ExperimentRow.state == "running")
    )
    if experiment is not None:
        msg = f"{spec.model} has experiment {experiment} running; stop or promote it first"
        raise ConflictError(msg, code="experiment_in_progress")
    return create_rollout(
        session,
        rollout_id=f"ro-{secrets.token_hex(5)}",
        model=spec.model,
        version=spec.version,
        baseline_version=baseline_version(session, bundle),
        spec=spec.canonical(),
        salt=salt or secrets.token_hex(16),
        now=now,
        created_by=actor,
    )


def baseline_version(session: Session, bundle: BundleRow) -> str | None:
    """What a rollout of ``bundle`` compares with and returns to: ``stable``, else the previous release."""
    stable = session.get(Alias, (bundle.model, "stable"))
    if stable is not None and stable.version != bundle.version:
        return stable.version
    return session.scalar(
        select(BundleRow.version)
        .where(BundleRow.model == bundle.model, BundleRow.release < bundle.release, BundleRow.yanked_at.is_(None))
        .order_by(BundleRow.release.desc())
        .limit(1)
    )


def _apply(
    session: Session, row: RolloutRow, spec: RolloutSpec, event: Event, *, actor: str, reason: str,
    detail: Mapping[str, Any], now: datetime,
) -> bool:  # fmt: skip
    before = _position(row)
    after = transition(before, event, has_lab=spec.lab is not None, approvals=_approvals(spec))
    new_stage = after.state in {RolloutState.CANARY, RolloutState.LAB} and (
        after.stage != before.stage or before.state is RolloutState.PENDING
    )
    planned = None
    if new_stage:
        planned = _compared(_cohorts(row, spec, _targets(session, spec), after.stage))
    applied = apply_transition(
        session,
        Transition(
            rollout_id=row.id,
            seen_revision=row.revision,
            event=event.value,
            from_state=before.state.value,
            to_state=after.state.value,
            stage=after.stage,
            resume_state=after.resume.value if after.resume else None,
            actor=actor,
            reason=reason,
            detail=detail,
            new_stage_started=new_stage,
            planned_devices=planned,
        ),
        now=now,
    )
    if applied and after.state is RolloutState.COMPLETE:
        set_alias(session, row.model, "stable", row.version, now=now, actor=actor)
    if applied:
        log.info(
            "rollout %s: %s -> %s (stage %d) by %s: %s",
            row.id, before.state.value, after.state.value, after.stage, actor, reason,
            extra={"rollout_id": row.id, "model": row.model, "version": row.version},
        )  # fmt: skip
    return applied


def run_command(
    session: Session, rollout_id: str, event: Event, *, actor: str, role: str, now: datetime,
    reason: str | None = None,
) -> RolloutRow:  # fmt: skip
    """Apply an operator's command (start, approve, pause, resume, abort, rollback).

    Raises:
        NotFoundError: no such rollout.
        ConflictError: the command is not allowed in the rollout's state (``bad_transition``),
            or another decision changed the rollout meanwhile (``concurrent_decision``).
        PermissionDeniedError: ``approve`` by a role the stage does not accept.
    """
    row = find_rollout(session, rollout_id)
    spec = _spec(row)
    if event is Event.APPROVE:
        _check_approver(row, spec, role)
    try:
        applied = _apply(
            session, row, spec, event, actor=actor, reason=reason or f"{event.value} by {actor}", detail={}, now=now
        )
    except ValueError as exc:
        raise ConflictError(str(exc), code="bad_transition") from exc
    if not applied:
        msg = f"rollout {rollout_id} changed while the command was applied; look at its status and try again"
        raise ConflictError(msg, code="concurrent_decision")
    session.flush()
    session.refresh(row)
    return row


def _check_approver(row: RolloutRow, spec: RolloutSpec, role: str) -> None:
    if row.state != RolloutState.AWAITING_APPROVAL.value:
        return  # the table refuses it with a clear message
    needed = spec.stages[row.stage + 1].approval or "admin"
    if role not in ROLES_FOR_APPROVAL[needed]:
        msg = f"stage {row.stage + 1} of rollout {row.id} needs approval by {needed}, not {role}"
        raise PermissionDeniedError(msg, code="approval_role")


class Reconciler:
    """Looks at every running rollout and applies what the telemetry decides."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, *, actor: str = "reconciler") -> None:
        """Use ``sessions`` for one transaction per rollout, ``clock`` for every time."""
        self._sessions = sessions
        self._clock = clock
        self._actor = actor

    def tick(self) -> list[str]:
        """One look at every rollout that can move; returns the ids that moved."""
        with self._sessions() as session:
            ids = list(
                session.scalars(select(RolloutRow.id).where(RolloutRow.state.in_([s.value for s in _LOOKED_AT])))
            )
        return [rollout_id for rollout_id in ids if self.look(rollout_id)]

    def look(self, rollout_id: str) -> bool:
        """Decide one rollout in one transaction; True when it moved."""
        now = self._clock.now()
        with self._sessions.begin() as session:
            try:
                row = find_rollout(session, rollout_id)
            except NotFoundError:
                return False
            if RolloutState(row.state) not in _LOOKED_AT:
                return False  # another process moved it since the ids were listed
            spec = _spec(row)
            decision = decide(session, row, spec, now)
            if decision.event is None:
                _hold(session, row, decision, now=now, actor=self._actor)
                return False
            return _apply(
                session, row, spec, decision.event, actor=self._actor, reason=decision.reason,
                detail=decision.detail, now=now,
            )  # fmt: skip


def _hold(session: Session, row: RolloutRow, decision: Decision, *, now: datetime, actor: str) -> None:
    """Keep the latest evaluation; audit a hold when its reason changes (not on every look)."""
    previous = (row.last_evaluation or {}).get("reason")
    evaluation = {"reason": decision.reason, "at": now.isoformat(), **decision.detail}
    if update_evaluation(session, row.id, row.revision, evaluation) and previous != decision.reason:
        append_audit(
            session, at=now, actor=actor, action="rollout.hold", target=row.id,
            detail={"reason": decision.reason, "state": row.state, "stage": row.stage, **decision.detail},
        )  # fmt: skip


def decide(session: Session, row: RolloutRow, spec: RolloutSpec, now: datetime) -> Decision:
    """What the telemetry and events say about a running rollout now (no writes)."""
    state = RolloutState(row.state)
    devices = _targets(session, spec)
    if state is RolloutState.ROLLING_BACK:
        return _rollback_progress(row, devices)
    failure = _hard_trigger(session, row, spec, devices)
    if failure is not None:
        return failure
    if state is RolloutState.LAB:
        return _lab(session, row, spec, devices, now)
    return _canary(session, row, spec, devices, now, awaiting=state is RolloutState.AWAITING_APPROVAL)


def _degraded(spec: RolloutSpec, reason: str, detail: Mapping[str, Any]) -> Decision:
    return Decision(Event.ROLLBACK if spec.on_failure == "rollback" else Event.PAUSE, reason, detail)


def _events(session: Session, row: RolloutRow, since: datetime, ids: set[str]) -> list[tuple[str, str]]:
    return [(device, kind) for device, kind in version_events(session, row.model, row.version, since) if device in ids]


def _hard_trigger(
    session: Session, row: RolloutRow, spec: RolloutSpec, devices: Sequence[TargetDevice]
) -> Decision | None:
    events = _events(session, row, row.started_at or row.created_at, {d.id for d in devices})
    failed = {device for device, kind in events if kind in FAILURE_EVENTS}
    passed = {device for device, kind in events if kind in SUCCESS_EVENTS} - failed
    loops = {device for device, kind in events if kind == "crash_loop"}
    triggers = spec.hard_triggers
    detail = {"failed_devices": len(failed), "passed_devices": len(passed), "crash_loop_devices": len(loops)}
    if len(loops) >= triggers.crash_loops:
        return _degraded(spec, f"{len(loops)} device(s) in a crash loop on {row.version}", detail)
    decided = len(failed) + len(passed)
    rate = len(failed) / decided if decided else 0.0
    if len(failed) >= triggers.min_failures and rate > triggers.failure_rate:
        reason = (
            f"install/health failures on {len(failed)} of {decided} devices ({rate:.0%}) exceed "
            f"{triggers.failure_rate:.0%} (minimum {triggers.min_failures})"
        )
        return _degraded(spec, reason, {**detail, "failure_rate": rate})
    return None


def _lab(
    session: Session, row: RolloutRow, spec: RolloutSpec, devices: Sequence[TargetDevice], now: datetime
) -> Decision:
    lab = spec.lab
    assert lab is not None  # noqa: S101 - LAB is only entered when the spec has a lab stage
    lab_ids = {d.id for d in devices if is_lab(d.tags)}
    since = row.stage_started_at or row.started_at or row.created_at
    events = _events(session, row, since, lab_ids)
    failed = sorted({d for d, k in events if k in FAILURE_EVENTS})
    passed = {d for d, k in events if k in SUCCESS_EVENTS} - set(failed)
    detail = {"lab_devices": len(lab_ids), "lab_passed": len(passed), "lab_failed": failed}
    if failed:
        return _degraded(spec, f"lab devices failed the health check: {', '.join(failed[:10])}", detail)
    elapsed = (now - since).total_seconds()
    if len(passed) >= lab.min_devices and elapsed >= lab.min_duration.total_seconds():
        return Decision(Event.LAB_PASSED, f"{len(passed)} lab device(s) passed golden vectors and budgets", detail)
    return Decision(None, f"lab: {len(passed)} of {lab.min_devices} devices passed so far", detail)


def _canary(
    session: Session, row: RolloutRow, spec: RolloutSpec, devices: Sequence[TargetDevice], now: datetime, *,
    awaiting: bool,
) -> Decision:  # fmt: skip
    stage = max(row.stage, 0)
    cohorts = _cohorts(row, spec, devices, row.stage)
    since = row.stage_started_at or row.started_at or row.created_at
    versions = [row.version, *([row.baseline_version] if row.baseline_version else [])]
    windows = windows_since(session, row.model, versions, since)
    completed = device_values(
        windows, cohorts, new_version=row.version, baseline_version=row.baseline_version, spec=spec, since=since
    )
    percent = _percent(spec, row.stage)
    evaluation = evaluate_stage(
        completed,
        spec,
        treatment_probability=treated_share(spec.holdout_percent, percent) if percent > 0 else 0.5,
        planned_devices=max(row.planned_devices, 2),
    )
    sizes = {cohort.value: sum(1 for c in cohorts.values() if c is cohort) for cohort in Cohort}
    detail = {"stage": row.stage, "percent": percent, "cohorts": sizes, "evaluation": evaluation.as_dict()}
    if evaluation.decision == "rollback":
        return _degraded(spec, _why_rollback(evaluation), detail)
    if awaiting:
        return Decision(None, f"stage {row.stage + 1} waits for approval", detail)
    return _promote_or_hold(spec.stages[stage], evaluation, since, now, detail)


def _why_rollback(evaluation: StageEvaluation) -> str:
    worse = [g for g in evaluation.gates if g.decision == "rollback"]
    parts = [
        f"{g.metric} {g.treated_mean:.4g} on canaries vs {g.holdout_mean:.4g} on holdout, "
        f"interval [{g.lower:.4g}, {g.upper:.4g}], p={g.degradation_p_value:.2g}"
        for g in worse
        if g.treated_mean is not None and g.holdout_mean is not None and g.lower is not None and g.upper is not None
        and g.degradation_p_value is not None
    ]  # fmt: skip
    return "gate failed: " + "; ".join(parts)


def _promote_or_hold(
    stage: Stage,
    evaluation: StageEvaluation,
    since: datetime,
    now: datetime,
    detail: Mapping[str, Any],
) -> Decision:
    waiting = []
    if evaluation.decision != "promote":
        undecided = [g.metric for g in evaluation.gates if g.decision != "promote"]
        waiting.append(f"gates not yet shown non-inferior: {', '.join(undecided)}")
    if evaluation.treated_devices < stage.min_devices:
        waiting.append(f"{evaluation.treated_devices} of {stage.min_devices} canary devices have reported")
    remaining = stage.min_duration.total_seconds() - (now - since).total_seconds()
    if remaining > 0:
        waiting.append(f"minimum duration not reached ({remaining:.0f} s left)")
    if waiting:
        return Decision(None, "; ".join(waiting), detail)
    return Decision(Event.PROMOTE, "every gate shows non-inferiority within its margin", detail)


def _rollback_progress(row: RolloutRow, devices: Sequence[TargetDevice]) -> Decision:
    still = sorted(
        d.id
        for d in devices
        if any(e.get("model") == row.model and e.get("version") == row.version for e in d.installed)
    )
    detail = {"devices_on_version": len(still)}
    if still:
        return Decision(None, f"{len(still)} device(s) still run {row.version}", detail)
    return Decision(Event.ROLLBACK_DONE, f"no target device runs {row.version} any more", detail)


def _runs(device: TargetDevice, model: str, version: str) -> bool:
    return any(entry.get("model") == model and entry.get("version") == version for entry in device.installed)
