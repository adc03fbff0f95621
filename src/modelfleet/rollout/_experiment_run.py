"""Running experiments: start, read, stop on a sample-ratio mismatch, promote a winner through a rollout.

Reads are pure (:func:`current_analysis` writes nothing); the watcher's looks
store the latest analysis and make the two automatic decisions (stop on SRM,
auto-promote a winner when the spec asks), each applied only to the revision
it was decided on and audited with the analysis behind it.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from modelfleet.clock import Clock
from modelfleet.errors import ConflictError
from modelfleet.rollout._evaluate import metric_value
from modelfleet.rollout._experiment import (
    STARTABLE_KINDS,
    ExperimentSpec,
    analyze_experiment,
    device_arms,
    exposure_windows,
    plan_for,
)
from modelfleet.rollout._experiment_paired import shadow_analysis, shadow_devices, time_slice_analysis
from modelfleet.rollout._reconciler import new_rollout, run_command
from modelfleet.rollout._spec import Metric, parse_spec
from modelfleet.rollout._states import TERMINAL, Event
from modelfleet.stats import DeviceInterval, ExperimentAnalysis, ShadowAnalysis, fleet_variance
from modelfleet.store import (
    DeviceWindow,
    ExperimentRow,
    RolloutRow,
    change_experiment,
    create_experiment,
    find_bundle,
    find_experiment,
    save_analysis,
    selector_matches,
    target_devices,
    windows_since,
)

__all__ = [
    "ExperimentWatcher",
    "analysis_json",
    "current_analysis",
    "current_document",
    "experiment_plan",
    "promote_experiment",
    "start_experiment",
    "stop_experiment",
]

_FLEET_SD_WINDOW = timedelta(days=1)
_MIN_DEVICES_FOR_SD = 10


def _jsonable(value: Any) -> Any:  # noqa: ANN401 - JSON
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def analysis_json(analysis: ExperimentAnalysis) -> dict[str, Any]:
    """The analysis as JSON values (non-finite numbers as null)."""
    return _jsonable(dataclasses.asdict(analysis))  # type: ignore[no-any-return]


def _interval_json(interval: DeviceInterval) -> dict[str, Any]:
    return _jsonable(dataclasses.asdict(interval))  # type: ignore[no-any-return]


def _shadow_json(shadow: ShadowAnalysis) -> dict[str, Any]:
    """What a shadow adds to its verdict: agreement, confidence difference, latencies and the guard's margin, (b, c)."""
    return {
        "agreement": _interval_json(shadow.agreement),
        "confidence_difference": _interval_json(shadow.confidence_difference),
        "active_latency_ms": _jsonable(shadow.active_latency_ms),
        "candidate_latency_ms": _jsonable(shadow.candidate_latency_ms),
        "latency_margin": shadow.latency_margin,
        "discordant": {"only_active_correct": shadow.discordant[0], "only_candidate_correct": shadow.discordant[1]},
    }


def _targets(session: Session, spec: ExperimentSpec) -> list[tuple[str, dict[str, str]]]:
    return [(d.id, dict(d.tags)) for d in target_devices(session) if selector_matches(spec.selector, d.tags)]


def _measured_sd(session: Session, spec: ExperimentSpec, now: datetime) -> float | None:
    """Device-level sd of the primary metric on the control version over the last day."""
    per_device: dict[str, list[DeviceWindow]] = defaultdict(list)
    for window in windows_since(session, spec.model, [spec.variants[0].version], now - _FLEET_SD_WINDOW):
        per_device[window.device_id].append(window)
    primary = spec.metrics[0].metric
    if spec.kind != "ab":
        return _within_sd(per_device.values(), primary, exposure_windows(spec))
    values = [v for w in per_device.values() if (v := metric_value(primary, w)) is not None]
    return statistics.stdev(values) if len(values) >= _MIN_DEVICES_FOR_SD else None


def _within_sd(devices: Iterable[list[DeviceWindow]], metric: Metric, exposure: int) -> float | None:
    """The sd of one device's value over ``exposure`` windows, from the window-to-window spread within devices."""
    rows = [[math.nan if (v := metric_value(metric, [w])) is None else v for w in windows] for windows in devices]
    width = max((len(r) for r in rows), default=0)
    if len(rows) < _MIN_DEVICES_FOR_SD or width < 2:  # noqa: PLR2004 - a spread needs two windows
        return None
    matrix = np.array([r + [math.nan] * (width - len(r)) for r in rows])
    counts = np.isfinite(matrix).sum(axis=1)
    counts = counts[counts >= 2]  # noqa: PLR2004 - as fleet_variance keeps them
    if counts.size < 2:  # noqa: PLR2004 - two devices
        return None
    per_window = fleet_variance(matrix).within_sd / math.sqrt(float(np.mean(1.0 / counts)))
    return per_window / math.sqrt(exposure) if per_window > 0 else None


def experiment_plan(session: Session, spec: ExperimentSpec, now: datetime) -> Any:  # noqa: ANN401 - ExperimentPlan
    """The power analysis on the fleet as it is now (target devices, the control's device-level sd)."""
    targets = [t for t in _targets(session, spec) if t[1].get("lab", "").lower() not in {"true", "1", "yes"}]
    return plan_for(spec, target_devices=len(targets), measured_sd=_measured_sd(session, spec, now))


def start_experiment(
    session: Session, spec: ExperimentSpec, *, now: datetime, actor: str, force: bool
) -> ExperimentRow:
    """Check and start an experiment.

    Raises:
        NotFoundError: a variant's version does not exist.
        ConflictError: a kind that cannot be started, a yanked version, another experiment or a rollout
            of the model in progress, or a plan that cannot reach its power (unless ``force``).
    """
    if spec.kind not in STARTABLE_KINDS:
        msg = f"{spec.kind} experiments cannot be started; start one of {sorted(STARTABLE_KINDS)}"
        raise ConflictError(msg, code="kind_not_supported")
    for variant in spec.variants:
        if find_bundle(session, spec.model, variant.version).yanked_at is not None:
            msg = f"{spec.model} {variant.version} is yanked"
            raise ConflictError(msg, code="yanked")
    _check_free(session, spec.model)
    plan = experiment_plan(session, spec, now)
    if not plan.feasible and not force:
        msg = f"the experiment cannot reach its power: {plan.reason} (start with force to override)"
        raise ConflictError(msg, code="plan_infeasible")
    return create_experiment(
        session, experiment_id=f"ex-{secrets.token_hex(5)}", model=spec.model, kind=spec.kind,
        spec=spec.canonical(), salt=secrets.token_hex(16), planned_devices=plan.devices_needed, now=now,
        created_by=actor,
    )  # fmt: skip


def _check_free(session: Session, model: str) -> None:
    running = session.scalar(
        select(ExperimentRow.id).where(ExperimentRow.model == model, ExperimentRow.state == "running")
    )
    if running is not None:
        msg = f"{model} already has experiment {running} running; stop it first"
        raise ConflictError(msg, code="experiment_in_progress")
    rollout = session.scalar(
        select(RolloutRow.id).where(RolloutRow.model == model, RolloutRow.state.not_in([s.value for s in TERMINAL]))
    )
    if rollout is not None:
        msg = f"{model} has rollout {rollout} in progress; an experiment would fight over the same devices"
        raise ConflictError(msg, code="rollout_in_progress")


def current_analysis(session: Session, row: ExperimentRow) -> ExperimentAnalysis:
    """The verdict from the telemetry stored so far (writes nothing)."""
    return _read(session, row)[0]


def current_document(session: Session, row: ExperimentRow) -> dict[str, Any]:
    """The analysis as JSON, with what a shadow or time slice adds to the verdict (writes nothing)."""
    analysis, extra = _read(session, row)
    return analysis_json(analysis) | extra


def _read(session: Session, row: ExperimentRow) -> tuple[ExperimentAnalysis, dict[str, Any]]:
    """The verdict of the experiment's kind, and the kind's own figures."""
    spec = ExperimentSpec.model_validate(row.spec)
    since = row.started_at or row.created_at
    if spec.kind == "shadow":
        shadow = shadow_analysis(shadow_devices(session, spec, since), spec, planned_devices=row.planned_devices)
        return shadow.analysis, {"shadow": _shadow_json(shadow)}
    if spec.kind == "time_slice":
        analysis, span = time_slice_analysis(
            session, spec, salt=row.salt, since=since, planned_devices=row.planned_devices
        )
        return analysis, {"time_slice": {"slot_seconds": spec.window_seconds, "slots_per_device": span}}
    arms = device_arms(row.salt, _targets(session, spec), spec)
    windows = windows_since(session, spec.model, [v.version for v in spec.variants], since)
    return analyze_experiment(windows, arms, spec, planned_devices=row.planned_devices), {}


def stop_experiment(session: Session, experiment_id: str, *, now: datetime, actor: str, reason: str) -> ExperimentRow:
    """Stop a running experiment; devices return to what pins and rollouts say.

    Raises:
        ConflictError: it is not running, or changed meanwhile.
    """
    row = find_experiment(session, experiment_id)
    _change(session, row, state="stopped", actor=actor, now=now, reason=reason)
    return row


def _change(session: Session, row: ExperimentRow, **change: Any) -> None:  # noqa: ANN401 - forwarded
    if row.state != "running":
        msg = f"experiment {row.id} is {row.state}, not running"
        raise ConflictError(msg, code="bad_transition")
    if not change_experiment(session, row, **change):
        msg = f"experiment {row.id} changed while the command was applied; look at its status and try again"
        raise ConflictError(msg, code="concurrent_decision")


def promote_experiment(
    session: Session, experiment_id: str, *, now: datetime, actor: str, version: str | None = None
) -> ExperimentRow:
    """Ship the winner (or ``version``) through a staged rollout built from the spec's ``auto_promote``.

    Raises:
        ConflictError: no winner and no version named, no ``auto_promote`` in the spec, or not running.
    """
    row = find_experiment(session, experiment_id)
    spec = ExperimentSpec.model_validate(row.spec)
    analysis, extra = _read(session, row)
    chosen = version or analysis.winner
    if chosen is None:
        msg = f"experiment {row.id} has no winner yet ({analysis.reason}); name a version to promote anyway"
        raise ConflictError(msg, code="no_winner")
    if spec.auto_promote is None:
        msg = "the experiment's spec has no auto_promote section (stages, gates) to build the rollout from"
        raise ConflictError(msg, code="no_rollout_spec")
    rollout_spec = parse_spec({**spec.auto_promote, "model": spec.model, "version": chosen})
    reason = f"promoting {chosen}: {analysis.reason}"
    _change(session, row, state="promoted", actor=actor, now=now, reason=reason, winner=chosen,
            detail={"analysis": analysis_json(analysis) | extra})  # fmt: skip
    rollout = new_rollout(session, rollout_spec, now=now, actor=actor)
    run_command(session, rollout.id, Event.START, actor=actor, role="admin", now=now, reason=f"from {row.id}")
    session.execute(update(ExperimentRow).where(ExperimentRow.id == row.id).values(rollout_id=rollout.id))
    session.expire(row)
    return row


class ExperimentWatcher:
    """Looks at every running experiment: keeps its analysis, stops it on SRM, auto-promotes a winner."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, *, actor: str = "experiment-watcher") -> None:
        """Use ``sessions`` for one transaction per experiment."""
        self._sessions = sessions
        self._clock = clock
        self._actor = actor

    def tick(self) -> list[str]:
        """One look at each running experiment; returns the ids that stopped or were promoted."""
        with self._sessions() as session:
            ids = list(session.scalars(select(ExperimentRow.id).where(ExperimentRow.state == "running")))
        return [experiment_id for experiment_id in ids if self.look(experiment_id)]

    def look(self, experiment_id: str) -> bool:
        """Analyse one experiment and act on it; True when it stopped or was promoted."""
        now = self._clock.now()
        with self._sessions.begin() as session:
            row = find_experiment(session, experiment_id)
            if row.state != "running":
                return False
            analysis, extra = _read(session, row)
            document = analysis_json(analysis) | extra
            save_analysis(session, row, document | {"at": now.isoformat()})
            spec = ExperimentSpec.model_validate(row.spec)
            if analysis.verdict == "stopped":
                return change_experiment(
                    session, row, state="stopped", actor=self._actor, now=now, reason=analysis.reason,
                    detail={"analysis": document},
                )  # fmt: skip
            if analysis.verdict == "winner" and spec.auto_promote is not None:
                promote_experiment(session, experiment_id, now=now, actor=self._actor)
                return True
        return False
