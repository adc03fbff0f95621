"""Shadow and time-slice analyses from stored telemetry: each device compared with itself.

Shadow: a device's value is the sum over its first ``exposure_windows`` shadow
windows (role ``shadow``, the candidate's summaries with their ``ShadowStats``)
with, for the active model's latency, its active-role windows that started at the
same instants. :func:`modelfleet.stats.analyze_shadow` takes one row per device in
the order devices completed that exposure.

Time slice: both versions report role ``time_slice``. Every window is placed in
its schedule slot (:class:`~modelfleet.protocol.TimeSlice`, slots from the epoch,
the device's rotation from the experiment's salt) and kept only when the version
that reported it is the one the schedule gives that slot. A device's analysis
span starts at its first whole block (slot ≡ 0 mod 4) and covers
``exposure_windows`` rounded up to whole blocks; the device enters
:func:`modelfleet.stats.analyze_time_slice` once a window at the span's last slot
arrived, missing slots as NaN.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.rollout._evaluate import metric_value
from modelfleet.rollout._experiment import ExperimentSpec, device_time_slice, exposure_windows
from modelfleet.rollout._spec import Metric
from modelfleet.stats import ExperimentAnalysis, ShadowAnalysis, ShadowLabels, analyze_shadow, analyze_time_slice
from modelfleet.store import DeviceWindow, SummaryRow

__all__ = ["ShadowDevice", "shadow_analysis", "shadow_devices", "time_slice_analysis"]

_BLOCK = 4  # slots per block of the two-version schedule (ABBA)
_LABEL_FIELDS = ("n_labelled", "active_correct", "only_active_correct", "only_candidate_correct")


@dataclass(slots=True)
class ShadowDevice:
    """One device's shadow exposure, summed over its windows."""

    device_id: str
    completed_at: float = math.nan
    windows: list[datetime] = field(default_factory=list)
    n_compared: int = 0
    n_agree: int = 0
    active_confidence_sum: float = 0.0
    candidate_confidence_sum: float = 0.0
    candidate_scored: int = 0
    candidate_latency_sum_ms: float = 0.0
    candidate_n: int = 0
    active_latency_sum_ms: float = 0.0
    active_n: int = 0
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_LABEL_FIELDS, 0))

    def add_shadow(self, row: Any, shadow: Mapping[str, Any]) -> None:  # noqa: ANN401 - a result row
        """Count one candidate window with its comparison to the active answers."""
        self.windows.append(row.window_start)
        self.n_compared += int(shadow["n_compared"])
        self.n_agree += int(shadow["n_agree"])
        self.active_confidence_sum += float(shadow["active_confidence_sum"])
        self.candidate_confidence_sum += float(row.confidence_sum)
        self.candidate_scored += int(row.n_scored)
        self.candidate_latency_sum_ms += float(row.latency_sum_ms)
        self.candidate_n += int(row.n)
        for name in _LABEL_FIELDS:
            self.labels[name] += int(shadow.get(name, 0))
        self.completed_at = row.window_start.timestamp() + row.window_seconds

    @property
    def usable(self) -> bool:
        """Both models answered and were timed (the latency guard compares the two times' ratio)."""
        answered = self.n_compared > 0 and self.candidate_scored > 0
        timed = self.active_n > 0 and self.candidate_n > 0
        return answered and timed and self.active_latency_sum_ms > 0 and self.candidate_latency_sum_ms > 0


def shadow_devices(session: Session, spec: ExperimentSpec, since: datetime) -> list[ShadowDevice]:
    """Devices that completed their shadow exposure, in completion order."""
    active, candidate = spec.variants[0].version, spec.variants[1].version
    s = SummaryRow
    shadow_rows = session.execute(
        select(s.device_id, s.window_start, s.window_seconds, s.n, s.n_scored, s.confidence_sum, s.latency_sum_ms,
               s.body)
        .where(s.model == spec.model, s.version == candidate, s.role == "shadow", s.window_start >= since)
        .order_by(s.window_start, s.device_id)
    )  # fmt: skip
    devices: dict[str, ShadowDevice] = {}
    for row in shadow_rows:
        shadow = (row.body or {}).get("shadow")
        if not shadow or shadow.get("active_version") != active or int(shadow["n_compared"]) < spec.min_inferences:
            continue
        device = devices.setdefault(row.device_id, ShadowDevice(row.device_id))
        if len(device.windows) < spec.exposure_windows:
            device.add_shadow(row, shadow)
    done = {k: d for k, d in devices.items() if len(d.windows) == spec.exposure_windows}
    _add_active_latency(session, spec, since, done)
    return sorted((d for d in done.values() if d.usable), key=lambda d: (d.completed_at, d.device_id))


def _add_active_latency(
    session: Session, spec: ExperimentSpec, since: datetime, devices: dict[str, ShadowDevice]
) -> None:
    """The active model's latency on each device over the windows its shadow counted."""
    if not devices:
        return
    starts = {device_id: set(d.windows) for device_id, d in devices.items()}
    s = SummaryRow
    rows = session.execute(
        select(s.device_id, s.window_start, s.n, s.latency_sum_ms).where(
            s.model == spec.model, s.version == spec.variants[0].version, s.role == "active", s.window_start >= since
        )
    )
    for row in rows:
        if row.window_start in starts.get(row.device_id, ()):
            device = devices[row.device_id]
            device.active_latency_sum_ms += float(row.latency_sum_ms)
            device.active_n += int(row.n)


def shadow_analysis(devices: Sequence[ShadowDevice], spec: ExperimentSpec, *, planned_devices: int) -> ShadowAnalysis:
    """The shadow analysis of devices in completion order (labelled correctness when any device has labels).

    The latency guard uses the spec's ``latency_margin`` (ADR 0007, "Shadow latency guard margin").
    """
    compared = np.array([d.n_compared for d in devices], dtype=np.int64)
    labelled = sum(d.labels["n_labelled"] for d in devices) > 0
    labels = (
        ShadowLabels(*(np.array([d.labels[name] for d in devices], dtype=np.int64) for name in _LABEL_FIELDS))
        if labelled
        else None
    )
    return analyze_shadow(
        n_compared=compared,
        n_agree=np.array([d.n_agree for d in devices], dtype=np.int64),
        active_confidence=np.array([d.active_confidence_sum / d.n_compared for d in devices]),
        candidate_confidence=np.array([d.candidate_confidence_sum / d.candidate_scored for d in devices]),
        active_latency_ms=np.array([d.active_latency_sum_ms / d.active_n for d in devices]),
        candidate_latency_ms=np.array([d.candidate_latency_sum_ms / d.candidate_n for d in devices]),
        planned_devices=max(planned_devices, len(devices), 2),
        labels=labels,
        alpha=spec.alpha,
        correction=spec.correction,
        candidate=spec.variants[1].version,
        latency_margin=spec.shadow_latency_margin,
    )


def _time_slice_windows(session: Session, spec: ExperimentSpec, since: datetime) -> list[DeviceWindow]:
    s = SummaryRow
    rows = session.execute(
        select(s.device_id, s.version, s.window_start, s.window_seconds, s.n, s.errors, s.fallbacks, s.timeouts,
               s.n_labelled, s.n_correct, s.n_scored, s.confidence_sum, s.latency_sum_ms)
        .where(s.model == spec.model, s.version.in_([v.version for v in spec.variants]), s.role == "time_slice",
               s.window_start >= since)
        .order_by(s.window_start, s.device_id)
    )  # fmt: skip
    return [DeviceWindow(**row._asdict()) for row in rows]


@dataclass(frozen=True, slots=True)
class _SliceDevice:
    device_id: str
    completed_at: float
    values: Mapping[str, list[float]]
    schedule: list[int]


def _slice_devices(windows: Iterable[DeviceWindow], spec: ExperimentSpec, salt: str) -> list[_SliceDevice]:
    """Devices whose span has ended, each slot's windows kept only when the scheduled version reported them."""
    versions = [v.version for v in spec.variants]
    by_slot: dict[str, dict[int, list[DeviceWindow]]] = defaultdict(lambda: defaultdict(list))
    for window in windows:
        schedule = device_time_slice(salt, window.device_id, spec)
        if window.n >= spec.min_inferences and versions.index(window.version) == schedule.version_at(
            window.window_start
        ):
            by_slot[window.device_id][schedule.slot(window.window_start)].append(window)
    span = exposure_windows(spec)
    done = []
    for device_id, slots in by_slot.items():
        first = math.ceil(min(slots) / _BLOCK) * _BLOCK
        if max(slots) < first + span - 1:
            continue
        schedule = device_time_slice(salt, device_id, spec)
        block = [*schedule.order, *reversed(schedule.order)]
        values: dict[str, list[float]] = {
            m.metric: [_value(m.metric, slots.get(first + j, [])) for j in range(span)] for m in spec.metrics
        }
        completed = (first + span) * schedule.slot_seconds
        done.append(_SliceDevice(device_id, completed, values, [block[j % _BLOCK] for j in range(span)]))
    done.sort(key=lambda d: (d.completed_at, d.device_id))
    return done


def _value(metric: Metric, windows: list[DeviceWindow]) -> float:
    value = metric_value(metric, windows) if windows else None
    return math.nan if value is None else value


def time_slice_analysis(
    session: Session, spec: ExperimentSpec, *, salt: str, since: datetime, planned_devices: int
) -> tuple[ExperimentAnalysis, int]:
    """The time-slice analysis now, and the slots a device's span covers."""
    devices = _slice_devices(_time_slice_windows(session, spec, since), spec, salt)
    span = exposure_windows(spec)
    values: dict[str, Any] = {
        m.metric: np.array([d.values[m.metric] for d in devices]).reshape(-1, span) for m in spec.metrics
    }
    analysis = analyze_time_slice(
        values,
        np.array([d.schedule for d in devices], dtype=np.int64).reshape(-1, span),
        metrics=spec.stats_metrics(),
        planned_devices=max(planned_devices, len(devices), 2),
        alpha=spec.alpha,
        correction=spec.correction,
        names=[v.version for v in spec.variants],
    )
    return analysis, span
