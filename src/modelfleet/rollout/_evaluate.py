"""Gate evaluation for one rollout stage: device-level values, compared treated vs holdout.

Pure: it takes the stage's telemetry windows and the devices' cohorts and
returns the evaluation with every number behind it (shared/DESIGN.md §7).

- The unit is the device. A device enters the stage's stream once it has
  ``exposure_windows`` windows in the stage (of the version its cohort runs,
  each with at least ``min_inferences``); its value for each metric is the ratio
  of sums over exactly those windows, so it never changes afterwards.
- Canary and holdout devices are measured over the same calendar windows: the
  stage's, after ``settle_windows`` in which the stage's installs land. So both
  arms complete their exposure at the same time and the stream's order (by
  completion, then device id) does not depend on the arm; were treated devices
  to arrive later than holdout ones, as they would if their install time
  counted, the fixed treatment probability of the estimator would be wrong for
  the early and late parts of the stream.
- Devices enter the stream in the order they completed exposure (ties by
  device id), which is what the always-valid confidence sequence needs.
- Each gate is a confidence sequence at the spec's α split over gates × stages
  (:meth:`RolloutSpec.gate_alpha`); rollback when any gate shows degradation,
  promotion when every gate shows non-inferiority within its margin.
"""

# ruff: noqa: RUF002 - statistics in mathematical notation

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from modelfleet.rollout._cohort import Cohort
from modelfleet.rollout._spec import Gate, Metric, RolloutSpec
from modelfleet.stats import evaluate_gate
from modelfleet.store import DeviceWindow

__all__ = ["DeviceValues", "GateResult", "StageEvaluation", "device_values", "evaluate_stage", "metric_value"]


def metric_value(metric: Metric, windows: Sequence[DeviceWindow]) -> float | None:
    """One device's value of ``metric`` over ``windows`` (None when the windows cannot define it)."""
    n = sum(w.n for w in windows)
    if metric == "mean_confidence":
        scored = sum(w.n_scored for w in windows)
        return sum(w.confidence_sum for w in windows) / scored if scored else None
    if metric == "accuracy":
        labelled = sum(w.n_labelled for w in windows)
        return sum(w.n_correct for w in windows) / labelled if labelled else None
    if n == 0:
        return None
    if metric == "error_rate":
        return sum(w.errors + w.timeouts for w in windows) / n
    if metric == "fallback_rate":
        return sum(w.fallbacks for w in windows) / n
    return sum(w.latency_sum_ms for w in windows) / n  # latency_ms


@dataclass(frozen=True, slots=True)
class DeviceValues:
    """A device that completed its exposure in the stage, with its value per metric."""

    device_id: str
    treated: bool
    completed_at: float
    values: Mapping[str, float | None]


def device_values(
    windows: Iterable[DeviceWindow],
    cohorts: Mapping[str, Cohort],
    *,
    new_version: str,
    baseline_version: str | None,
    spec: RolloutSpec,
    since: datetime | None = None,
) -> list[DeviceValues]:
    """Devices that completed exposure, in stream order, with their metric values.

    A treated device counts only its windows of the new version, a holdout
    device only its windows of the baseline; devices of other cohorts and
    windows with fewer than ``min_inferences`` inferences, or starting within
    ``settle_windows`` of ``since`` (the stage's start), do not count.
    """
    by_device: dict[str, list[DeviceWindow]] = defaultdict(list)
    for window in sorted(windows, key=lambda w: (w.window_start, w.device_id)):
        if since is not None and window.window_start < since + timedelta(
            seconds=spec.settle_windows * window.window_seconds
        ):
            continue
        cohort = cohorts.get(window.device_id)
        expected = {Cohort.TREATED: new_version, Cohort.HOLDOUT: baseline_version}.get(cohort) if cohort else None
        if expected is None or window.version != expected or window.n < spec.min_inferences:
            continue
        if len(by_device[window.device_id]) < spec.exposure_windows:
            by_device[window.device_id].append(window)
    completed = []
    for device_id, exposure in by_device.items():
        if len(exposure) < spec.exposure_windows:
            continue
        last = exposure[-1]
        completed.append(
            DeviceValues(
                device_id=device_id,
                treated=cohorts[device_id] is Cohort.TREATED,
                completed_at=last.window_start.timestamp() + last.window_seconds,
                values={gate.metric: metric_value(gate.metric, exposure) for gate in spec.gates},
            )
        )
    completed.sort(key=lambda d: (d.completed_at, d.device_id))
    return completed


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's evaluation: decision, interval of treated − holdout, always-valid p-values."""

    metric: str
    direction: str
    margin: float
    decision: str
    estimate: float | None
    lower: float | None
    upper: float | None
    degradation_p_value: float | None
    inferiority_p_value: float | None
    treated_devices: int
    holdout_devices: int
    treated_mean: float | None
    holdout_mean: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with infinities as None."""
        return {key: _finite(getattr(self, key)) for key in self.__dataclass_fields__}


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class StageEvaluation:
    """All gates of a stage at one look, and what they decide together."""

    decision: str
    treated_devices: int
    holdout_devices: int
    gates: tuple[GateResult, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "decision": self.decision,
            "treated_devices": self.treated_devices,
            "holdout_devices": self.holdout_devices,
            "gates": [gate.as_dict() for gate in self.gates],
        }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _evaluate_gate(
    gate: Gate, devices: Sequence[DeviceValues], spec: RolloutSpec, treatment_probability: float, planned: int
) -> GateResult:
    pairs = [(d.values[gate.metric], d.treated) for d in devices if d.values.get(gate.metric) is not None]
    values = [float(v) for v, _ in pairs if v is not None]
    treated = [1 if t else 0 for _, t in pairs]
    treated_values = [v for v, t in zip(values, treated, strict=True) if t]
    holdout_values = [v for v, t in zip(values, treated, strict=True) if not t]
    base = GateResult(
        metric=gate.metric, direction=gate.oriented, margin=gate.margin, decision="continue", estimate=None,
        lower=None, upper=None, degradation_p_value=None, inferiority_p_value=None,
        treated_devices=len(treated_values), holdout_devices=len(holdout_values),
        treated_mean=_mean(treated_values), holdout_mean=_mean(holdout_values),
    )  # fmt: skip
    if not treated_values or not holdout_values:
        return base
    result = evaluate_gate(
        values,
        treated,
        treatment_probability=treatment_probability,
        planned_devices=max(planned, len(values)),
        margin=gate.margin,
        direction=gate.oriented,
        alpha_rollback=spec.gate_alpha(),
        alpha_promote=spec.alpha,
    )
    cs = result.confidence_sequence
    return replace(
        base,
        decision=result.decision,
        estimate=cs.estimate,
        lower=cs.lower,
        upper=cs.upper,
        degradation_p_value=result.degradation_p_value,
        inferiority_p_value=result.inferiority_p_value,
    )


def evaluate_stage(
    devices: Sequence[DeviceValues], spec: RolloutSpec, *, treatment_probability: float, planned_devices: int
) -> StageEvaluation:
    """Every gate on the stage's device stream; ``rollback`` if any gate says so, ``promote`` if all do."""
    results = tuple(_evaluate_gate(g, devices, spec, treatment_probability, planned_devices) for g in spec.gates)
    decisions = {result.decision for result in results}
    if "rollback" in decisions:
        decision = "rollback"
    elif decisions == {"promote"}:
        decision = "promote"
    else:
        decision = "continue"
    return StageEvaluation(
        decision=decision,
        treated_devices=sum(1 for d in devices if d.treated),
        holdout_devices=sum(1 for d in devices if not d.treated),
        gates=results,
    )
