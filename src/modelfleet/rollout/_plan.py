"""The power analysis of a rollout spec: can each stage detect each gate's margin? (shared/DESIGN.md §7).

Every stage runs its own always-valid test and must show non-inferiority
within the margin to widen, which takes about as many devices as catching a
degradation of the margin; so a stage that cannot reach that many compared
devices would hold forever. :func:`plan_rollout` says, per stage and gate, how
many devices and how long are needed and whether the fleet has them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet.rollout._spec import Gate, RolloutSpec
from modelfleet.stats import plan_stage

__all__ = ["GatePlan", "RolloutPlan", "plan_rollout"]


@dataclass(frozen=True, slots=True)
class GatePlan:
    """One gate at one stage."""

    stage: int
    metric: str
    margin: float
    device_sd: float | None
    sd_source: str
    devices_needed: int | None
    devices_available: int
    hours_needed: float | None
    minimum_detectable_effect: float | None
    feasible: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """Every gate at every stage, and whether the whole plan can detect its margins."""

    target_devices: int
    gate_alpha: float
    gates: tuple[GatePlan, ...]

    @property
    def feasible(self) -> bool:
        """Whether every stage can detect every gate's margin."""
        return all(gate.feasible for gate in self.gates)

    def problems(self) -> list[str]:
        """One line per gate and stage that cannot detect its margin."""
        return [f"stage {g.stage + 1} {g.metric}: {g.reason}" for g in self.gates if not g.feasible]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "target_devices": self.target_devices,
            "gate_alpha": self.gate_alpha,
            "feasible": self.feasible,
            "gates": [{key: getattr(g, key) for key in g.__dataclass_fields__} for g in self.gates],
        }


def _compared(target: int, holdout_percent: float, percent: float) -> tuple[int, float]:
    """Compared devices at a stage and the holdout's share among them."""
    holdout = target * holdout_percent / 100
    treated = (target - holdout) * percent / 100
    compared = holdout + treated
    return math.floor(compared), holdout / compared if compared else 1.0


def plan_rollout(
    spec: RolloutSpec, *, target_devices: int, measured_sd: Mapping[str, float] | None = None
) -> RolloutPlan:
    """Plan every stage of ``spec`` on a target of ``target_devices`` (lab devices excluded).

    Args:
        spec: the rollout spec.
        target_devices: devices matching the selector, without lab devices.
        measured_sd: per-metric device-level sd the fleet shows now; it wins over the spec's assumption.
    """
    measured = dict(measured_sd or {})
    exposure_hours = spec.exposure_windows * spec.planning.window_seconds / 3600
    plans = []
    for index, stage in enumerate(spec.stages):
        available, holdout_share = _compared(target_devices, spec.holdout_percent, stage.percent)
        for gate in spec.gates:
            sd, source = _sd(gate.metric, measured, spec)
            if sd is None:
                reason = (
                    f"no device-level variance known for {gate.metric}: set planning.device_sd.{gate.metric} "
                    "or let the baseline report telemetry first"
                )
                plans.append(_refused(index, gate, None, source, available, reason))
                continue
            if gate.margin <= 0 or not 0 < holdout_share < 1:
                reason = "a zero margin cannot be shown" if gate.margin <= 0 else "the stage compares no devices"
                plans.append(_refused(index, gate, sd, source, available, reason))
                continue
            result = plan_stage(
                margin=gate.margin,
                device_sd=sd,
                holdout_fraction=holdout_share,
                arrival_rate_per_hour=max(available, 1) / exposure_hours,
                alpha=spec.gate_alpha(),
                power=spec.planning.power,
                available_devices=available,
            )
            plans.append(
                GatePlan(
                    index, gate.metric, gate.margin, sd, source, result.devices_needed, available,
                    result.duration.total_seconds() / 3600 + stage.min_duration.total_seconds() / 3600,
                    result.minimum_detectable_effect, result.feasible, result.reason,
                )
            )  # fmt: skip
    return RolloutPlan(target_devices=target_devices, gate_alpha=spec.gate_alpha(), gates=tuple(plans))


def _sd(metric: str, measured: Mapping[str, float], spec: RolloutSpec) -> tuple[float | None, str]:
    if metric in measured and measured[metric] > 0:
        return measured[metric], "fleet"
    assumed = spec.planning.device_sd.get(metric)  # type: ignore[call-overload]
    if assumed is not None:
        return float(assumed), "spec"
    return None, "unknown"


def _refused(stage: int, gate: Gate, sd: float | None, source: str, available: int, reason: str) -> GatePlan:  # noqa: PLR0917 - the row's fields
    return GatePlan(
        stage=stage, metric=gate.metric, margin=gate.margin, device_sd=sd, sd_source=source, devices_needed=None,
        devices_available=available, hours_needed=None, minimum_detectable_effect=None, feasible=False, reason=reason,
    )  # fmt: skip
