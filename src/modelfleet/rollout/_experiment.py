"""Experiments on the fleet: the spec, sticky variant assignment, and the analysis from telemetry.

An A/B experiment splits the devices its selector matches into variants by
the same hashing as rollout cohorts (a fresh salt per experiment), so a device
keeps its variant and devices that join later are assigned too. Each device's
value per metric is the ratio of sums over its first ``exposure_windows``
windows of its variant's version (:func:`modelfleet.rollout.device_values`'
rule), and devices enter the analysis in the order they completed that
exposure; :func:`modelfleet.stats.analyze_ab` does the rest (always-valid
lifts, Holm/BH, the sequential sample-ratio check that stops an experiment).

Shadow and time-slice experiments enroll every target device whose agent
reports it runs that mode (``InstalledModel.modes``): the check-in tells it to
keep the control version and run the candidate beside it (``DesiredModel.candidate``),
with, for a time slice, the device's schedule from :func:`modelfleet.stats.time_slice_schedule`
over slots of ``window_seconds`` counted from the epoch. Their analyses are in
``_experiment_paired``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from modelfleet.protocol import TimeSlice
from modelfleet.rollout._cohort import BUCKETS, is_lab
from modelfleet.rollout._evaluate import metric_value
from modelfleet.rollout._spec import METRICS, Duration, Metric, _Spec
from modelfleet.stats import (
    DEFAULT_SHADOW_LATENCY_MARGIN,
    Direction,
    ExperimentAnalysis,
    ExperimentMetric,
    analyze_ab,
    paired_difference_sd,
    plan_experiment,
    time_slice_schedule,
)
from modelfleet.store import DeviceWindow, RolloutBundle, RunningExperiment, selector_matches

__all__ = [
    "STARTABLE_KINDS",
    "ExperimentAssignment",
    "ExperimentKind",
    "ExperimentSpec",
    "analyze_experiment",
    "device_arms",
    "device_time_slice",
    "experiment_assignment",
    "experiment_bundle",
    "experiment_variant",
    "exposure_windows",
    "plan_for",
]

ExperimentKind = Literal["ab", "shadow", "time_slice"]
STARTABLE_KINDS = frozenset({"ab", "shadow", "time_slice"})
_SCHEDULE_BLOCK = 4  # ABBA: one block of the two-version time-slice schedule
_MAX_LATENCY_MARGIN = 10.0  # a shadow candidate up to 11x slower: beyond that no guard is left


class Variant(_Spec):
    """One arm: the version it runs and its share of the target, in percent."""

    version: str = Field(min_length=1, max_length=128)
    share: float = Field(gt=0, le=100)


class MetricSpec(_Spec):
    """A compared metric; the first one of a spec is primary, the others are guards."""

    metric: Metric
    direction: Direction | None = None

    @property
    def oriented(self) -> Direction:
        """The direction given, or the metric's natural one."""
        return self.direction or METRICS[self.metric]


class ExperimentSpec(_Spec):
    """An experiment between versions of one model (shared/DESIGN.md §6)."""

    model: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    kind: ExperimentKind = "ab"
    variants: tuple[Variant, ...] = Field(min_length=2, max_length=8)
    selector: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], Annotated[str, Field(max_length=256)]] = (
        Field(default_factory=dict, max_length=32)
    )
    metrics: tuple[MetricSpec, ...] = Field(min_length=1, max_length=10)
    minimum_detectable_effect: float = Field(gt=0, allow_inf_nan=False)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    power: float = Field(default=0.8, gt=0, lt=1)
    correction: Literal["holm", "bh"] = "holm"
    max_duration: Duration = timedelta(days=14)
    exposure_windows: int = Field(default=3, ge=1, le=1000)
    window_seconds: int = Field(default=300, ge=1, le=86_400)
    min_inferences: int = Field(default=1, ge=1)
    device_sd: float | None = Field(
        default=None, gt=0, description="sd of a device's primary metric, if the fleet has no data yet"
    )
    within_sd: float | None = Field(
        default=None,
        gt=0,
        description="sd of one device's primary metric between two exposures (shadow, time slice), if the fleet "
        "has no data yet; device_sd stands in for it when absent",
    )
    auto_promote: dict[str, Any] | None = Field(
        default=None, description="stages, gates, holdout... of the staged rollout that ships a winner"
    )
    latency_margin: float | None = Field(
        default=None,
        ge=0,
        le=_MAX_LATENCY_MARGIN,
        allow_inf_nan=False,
        description="shadow only: how much slower (a share, 0.25 = 25 %) the candidate may measure than the "
        "active model before the latency guard fails; the candidate is scored after the active model in a "
        f"background thread, so it measures slower than it is. Default {DEFAULT_SHADOW_LATENCY_MARGIN:g}",
    )

    @model_validator(mode="before")
    @classmethod
    def _shadow_margin(cls, data: Any) -> Any:  # noqa: ANN401 - the raw spec
        """A shadow spec without a latency margin gets the default, so the stored spec carries the number."""
        if isinstance(data, Mapping) and data.get("kind") == "shadow" and data.get("latency_margin") is None:
            return {**data, "latency_margin": DEFAULT_SHADOW_LATENCY_MARGIN}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        versions = [v.version for v in self.variants]
        if len(set(versions)) != len(versions):
            msg = f"variants: each version at most once, got {versions}"
            raise ValueError(msg)
        total = sum(v.share for v in self.variants)
        if not math.isclose(total, 100.0, abs_tol=1e-6):
            msg = f"variants: shares must add up to 100, not {total:g}"
            raise ValueError(msg)
        if self.kind != "ab" and len(self.variants) != 2:  # noqa: PLR2004 - control and one candidate
            msg = f"variants: a {self.kind} experiment compares exactly two versions (active, candidate)"
            raise ValueError(msg)
        if self.kind != "shadow" and self.latency_margin is not None:
            msg = "latency_margin: only a shadow experiment has one (its candidate is timed off the caller's path)"
            raise ValueError(msg)
        return self

    def canonical(self) -> dict[str, Any]:
        """The spec as JSON-ready data, durations in seconds (what the server stores)."""
        return json.loads(self.model_dump_json())  # type: ignore[no-any-return]

    @property
    def shares(self) -> tuple[float, ...]:
        """Each arm's share as a fraction, control first."""
        return tuple(v.share / 100 for v in self.variants)

    @property
    def shadow_latency_margin(self) -> float:
        """The shadow latency guard's margin (a share of the active model's latency)."""
        return DEFAULT_SHADOW_LATENCY_MARGIN if self.latency_margin is None else self.latency_margin

    def stats_metrics(self) -> list[ExperimentMetric]:
        """The metrics as ``modelfleet.stats`` takes them, primary first."""
        return [ExperimentMetric(m.metric, m.oriented) for m in self.metrics]


def experiment_variant(salt: str, device_id: str, tags: Mapping[str, str], spec: ExperimentSpec) -> int | None:
    """The arm of a device (0 = control), sticky for the experiment; None for lab devices."""
    if is_lab(tags):
        return None
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    point = (int.from_bytes(digest[:8], "big") % BUCKETS) / BUCKETS
    edge = 0.0
    for arm, share in enumerate(spec.shares):
        edge += share
        if point < edge:
            return arm
    return len(spec.variants) - 1


@dataclass(frozen=True, slots=True)
class _Completed:
    device_id: str
    arm: int
    completed_at: float
    values: Mapping[str, float | None]


def _completed(windows: Iterable[DeviceWindow], arms: Mapping[str, int], spec: ExperimentSpec) -> list[_Completed]:
    versions = [v.version for v in spec.variants]
    exposure: dict[str, list[DeviceWindow]] = defaultdict(list)
    for window in sorted(windows, key=lambda w: (w.window_start, w.device_id)):
        arm = arms.get(window.device_id)
        if arm is None or window.version != versions[arm] or window.n < spec.min_inferences:
            continue
        if len(exposure[window.device_id]) < spec.exposure_windows:
            exposure[window.device_id].append(window)
    done = []
    for device_id, kept in exposure.items():
        if len(kept) == spec.exposure_windows:
            last = kept[-1]
            values: dict[str, float | None] = {m.metric: metric_value(m.metric, kept) for m in spec.metrics}
            completed_at = last.window_start.timestamp() + last.window_seconds
            done.append(_Completed(device_id, arms[device_id], completed_at, values))
    done.sort(key=lambda d: (d.completed_at, d.device_id))
    return done


def analyze_experiment(
    windows: Iterable[DeviceWindow], arms: Mapping[str, int], spec: ExperimentSpec, *, planned_devices: int
) -> ExperimentAnalysis:
    """The A/B analysis now: devices that completed exposure, in completion order, with a value for every metric."""
    completed = [d for d in _completed(windows, arms, spec) if all(v is not None for v in d.values.values())]
    values: dict[str, list[float]] = {
        m.metric: [float(d.values[m.metric] or 0.0) for d in completed] for m in spec.metrics
    }
    return analyze_ab(
        values,
        np.array([d.arm for d in completed], dtype=np.int64),
        metrics=spec.stats_metrics(),
        shares=spec.shares,
        planned_devices=max(planned_devices, len(completed), 2),
        alpha=spec.alpha,
        correction=spec.correction,
        names=[v.version for v in spec.variants],
    )


def exposure_windows(spec: ExperimentSpec) -> int:
    """Windows one device needs for its value: the spec's, for a time slice rounded up to whole ABBA blocks."""
    if spec.kind != "time_slice":
        return spec.exposure_windows
    return max(_SCHEDULE_BLOCK, math.ceil(spec.exposure_windows / _SCHEDULE_BLOCK) * _SCHEDULE_BLOCK)


def plan_for(spec: ExperimentSpec, *, target_devices: int, measured_sd: float | None) -> Any:  # noqa: ANN401 - ExperimentPlan
    """The power analysis of ``spec`` on ``target_devices`` (the fleet's sd if measured, else the spec's).

    ``measured_sd`` is the device-level sd for A/B and the within-device sd for the paired kinds.
    """
    paired = None
    if spec.kind != "ab":
        within = measured_sd or spec.within_sd or spec.device_sd
        paired = None if within is None else paired_difference_sd(spec.kind, within)
    return plan_experiment(
        spec.kind,
        effect=spec.minimum_detectable_effect,
        exposure=timedelta(seconds=exposure_windows(spec) * spec.window_seconds),
        difference_sd=paired,
        device_sd=measured_sd or spec.device_sd,
        alpha=spec.alpha,
        power=spec.power,
        shares=spec.shares,
        metrics=len(spec.metrics),
        available_devices=target_devices,
        max_duration=spec.max_duration,
    )


def device_arms(salt: str, devices: Sequence[tuple[str, Mapping[str, str]]], spec: ExperimentSpec) -> dict[str, int]:
    """The arm of every target device (lab devices left out)."""
    arms = {}
    for device_id, tags in devices:
        arm = experiment_variant(salt, device_id, tags, spec)
        if arm is not None:
            arms[device_id] = arm
    return arms


@dataclass(frozen=True, slots=True)
class ExperimentAssignment:
    """What a running experiment tells one device: the version to run and, for shadow or time slice, a candidate.

    Attributes:
        bundle: the version the device runs (its variant's, or the control of a shadow or time slice).
        mode: ``active`` for A/B, else the experiment's kind.
        candidate: the version run beside it (shadow, time slice).
        time_slice: the device's schedule (time slice only).
    """

    bundle: RolloutBundle
    mode: Literal["active", "shadow", "time_slice"] = "active"
    candidate: RolloutBundle | None = None
    time_slice: TimeSlice | None = None


def device_time_slice(salt: str, device_id: str, spec: ExperimentSpec) -> TimeSlice:
    """The device's schedule: its rotation from :func:`time_slice_schedule`, slots of the spec's window."""
    row = time_slice_schedule([device_id], windows=_SCHEDULE_BLOCK, salt=salt)[0]
    return TimeSlice(slot_seconds=spec.window_seconds, order=(int(row[0]), int(row[1])))


def experiment_assignment(
    experiment: RunningExperiment, device_id: str, tags: Mapping[str, str], installed: Mapping[str, Any] | None
) -> ExperimentAssignment | None:
    """What a running experiment assigns to a device, or None when it does not enroll it.

    ``installed`` is the device's report of the model: a shadow or time slice enrolls only a
    device that runs the model already and whose agent reports it runs that mode.
    """
    spec = ExperimentSpec.model_validate(experiment.spec)
    if not selector_matches(spec.selector, tags) or is_lab(tags):
        return None
    if spec.kind == "ab":
        arm = experiment_variant(experiment.salt, device_id, tags, spec)
        bundle = None if arm is None else experiment.bundles.get(spec.variants[arm].version)
        return None if bundle is None else ExperimentAssignment(bundle)
    if installed is None or spec.kind not in (installed.get("modes") or ()):
        return None
    control = experiment.bundles.get(spec.variants[0].version)
    candidate = experiment.bundles.get(spec.variants[1].version)
    if control is None or candidate is None:
        return None
    schedule = device_time_slice(experiment.salt, device_id, spec) if spec.kind == "time_slice" else None
    return ExperimentAssignment(control, spec.kind, candidate, schedule)


def experiment_bundle(experiment: RunningExperiment, device_id: str, tags: Mapping[str, str]) -> RolloutBundle | None:
    """The bundle a running A/B experiment assigns to a device, or None when it does not target it."""
    spec = ExperimentSpec.model_validate(experiment.spec)
    if spec.kind != "ab":
        return None
    assignment = experiment_assignment(experiment, device_id, tags, None)
    return None if assignment is None else assignment.bundle
