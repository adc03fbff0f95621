"""Time-slice experiments: versions alternate on each device, and each device is compared with itself.

**Schedule.** A device's windows run in blocks of 2k for k versions: an order
of the versions, then the same order reversed (ABBA, BAAB for two versions;
ABCCBA, BCAACB, CABBAC for three). Within a block every version's window
positions sum to the same number (2k − 1), so a linear time trend — sensor
aging, a slow drift of inputs — adds the same amount to every version's mean
and cancels from within-device differences. Which rotation a device starts with
comes from hash(salt, device id), so the schedule is deterministic per device
and, across the fleet, each version runs in each window position about equally
often (calendar effects shared by all devices cancel too).

**Analysis.** Per device, a least-squares fit of its window values on an
intercept, a linear time term (``trend="linear"``) and one indicator per
non-control version gives its within-device effect of each version; with full
blocks the trend term is orthogonal to the versions and the effect is the plain
difference of the version means, and with missing windows (NaN) the fit still
removes a linear trend. ``trend="none"`` uses the plain difference of means.
The device's own level cancels, so the fleet's device-to-device spread does not
enter the variance. The effects then run, device by device in the order devices
completed their schedule, through the paired always-valid confidence sequence
(:mod:`modelfleet.stats._streams`), and the family metrics × versions is
corrected by Holm or BH. Carry-over from one window into the next is not
modelled: the agent should drop a warm-up at the start of every window.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, IntArray, check_probability, float_array
from modelfleet.stats._experiments import (
    Comparison,
    Correction,
    ExperimentAnalysis,
    ExperimentMetric,
    side_alpha,
    summarize,
)
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM
from modelfleet.stats._streams import paired_path

__all__ = ["Trend", "analyze_time_slice", "time_slice_schedule", "within_device_effects"]

Trend = Literal["linear", "none"]
_SINGULAR = 1e-9


def time_slice_schedule(device_ids: Sequence[str], *, windows: int, salt: str, versions: int = 2) -> IntArray:
    """Return each device's version per window, shape ``[devices, windows]`` (0 = control).

    Args:
        device_ids: the devices, in any order; row i is ``device_ids[i]``.
        windows: windows per device; a multiple of 2·versions, so that every block is complete.
        salt: the experiment's salt (a device gets a fresh rotation in every experiment).
        versions: number of versions, control included.

    Raises:
        ValueError: windows is not a positive multiple of 2·versions, or fewer than two versions.
    """
    if versions < 2 or windows < 2 * versions or windows % (2 * versions):  # noqa: PLR2004 - control and candidate
        msg = f"windows must be a positive multiple of 2·versions = {2 * versions}, got {windows}"
        raise ValueError(msg)
    rows = np.empty((len(device_ids), windows), dtype=np.int64)
    base = np.arange(versions)
    for i, device in enumerate(device_ids):
        digest = hashlib.sha256(f"{salt}\x00{device}".encode()).digest()
        order = np.roll(base, -(int.from_bytes(digest[:8], "big") % versions))
        rows[i] = np.tile(np.concatenate([order, order[::-1]]), windows // (2 * versions))
    return rows


def _design(schedule: IntArray, versions: int, trend: Trend) -> FloatArray:
    """Return the per-device design matrices ``[..., windows, parameters]``."""
    windows = schedule.shape[-1]
    indicators = (schedule[..., None] == np.arange(1, versions)).astype(np.float64)
    ones = np.ones((*schedule.shape, 1))
    if trend == "none":
        return float_array(np.concatenate([ones, indicators], axis=-1))
    if trend != "linear":
        msg = f"trend must be 'linear' or 'none', got {trend!r}"
        raise ValueError(msg)
    time = np.broadcast_to((np.arange(windows) - (windows - 1) / 2.0)[:, None], ones.shape)
    return float_array(np.concatenate([ones, time, indicators], axis=-1))


def within_device_effects(
    values: ArrayLike, schedule: ArrayLike, *, versions: int = 2, trend: Trend = "linear"
) -> tuple[FloatArray, FloatArray]:
    """Return each device's within-device effect of every version and its control mean.

    Args:
        values: the metric per device and window, shape ``[..., devices, windows]``; NaN for a missing window.
        schedule: the version that ran in each window, same shape (0 = control).
        versions: number of versions, control included.
        trend: ``"linear"`` removes a linear time trend per device; ``"none"`` does not.

    Returns:
        effects ``[..., devices, versions − 1]`` (version − control; NaN where a device cannot be
        fitted, e.g. a version never ran) and the control mean ``[..., devices]``.
    """
    y = np.asarray(values, dtype=np.float64)
    s = np.asarray(schedule, dtype=np.int64)
    if y.shape != s.shape or y.ndim < 2 or np.any((s < 0) | (s >= versions)):  # noqa: PLR2004 - devices × windows
        msg = "values and schedule need the same shape [..., devices, windows] and versions 0..versions-1"
        raise ValueError(msg)
    seen = np.isfinite(y)
    weights = seen.astype(np.float64)
    y0 = np.where(seen, y, 0.0)
    x = _design(s, versions, trend)
    xtx = np.einsum("...wp,...w,...wq->...pq", x, weights, x)
    xty = np.einsum("...wp,...w->...p", x, weights * y0)
    scale = np.maximum(np.einsum("...pp->...", xtx), 1.0) ** xtx.shape[-1]
    ok = np.abs(np.linalg.det(xtx)) > _SINGULAR * scale
    ok &= np.all([((s == v) & seen).any(axis=-1) for v in range(versions)], axis=0)
    solved = np.linalg.solve(np.where(ok[..., None, None], xtx, np.eye(xtx.shape[-1])), xty[..., None])[..., 0]
    effects = np.where(ok[..., None], solved[..., -(versions - 1) :], np.nan)
    control_seen = weights * (s == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        control = np.sum(control_seen * y0, axis=-1) / np.sum(control_seen, axis=-1)
    return float_array(effects), float_array(control)


def analyze_time_slice(
    values: Mapping[str, ArrayLike],
    schedule: ArrayLike,
    *,
    metrics: Sequence[ExperimentMetric],
    planned_devices: int,
    alpha: float = 0.05,
    correction: Correction = "holm",
    trend: Trend = "linear",
    names: Sequence[str] | None = None,
    min_devices: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> ExperimentAnalysis:
    """Analyse a time-slice experiment on the devices that completed their schedule so far.

    Args:
        values: metric name → values ``[devices, windows]`` (NaN for a missing window), rows in the
            order devices completed their schedule.
        schedule: the version per device and window (:func:`time_slice_schedule`), same rows.
        metrics: the metrics; the first is primary, the others are guards.
        planned_devices: devices the experiment plans (from :func:`plan_experiment`).
        alpha: family-wise error (Holm) or FDR (BH) over metrics × versions.
        correction: ``"holm"`` or ``"bh"``.
        trend: ``"linear"`` removes a linear trend within each device (see the module docstring).
        names: version names, control first (default ``control``, ``variant 1``, ...).
        min_devices: devices needed before an interval is finite.
    """
    s = np.asarray(schedule, dtype=np.int64)
    if s.ndim != 2:  # noqa: PLR2004 - devices × windows
        msg = f"schedule must be [devices, windows], got shape {s.shape}"
        raise ValueError(msg)
    versions = (int(s.max()) + 1 if s.size else 2) if names is None else len(names)
    version_names = list(names) if names is not None else ["control"] + [f"variant {v}" for v in range(1, versions)]
    if versions < 2 or not metrics:  # noqa: PLR2004 - control and one version
        msg = "a time-slice experiment needs two versions and at least one metric"
        raise ValueError(msg)
    check_probability(alpha, "alpha")
    a_side = side_alpha(alpha, (versions - 1) * len(metrics))
    fitted = []
    for metric in metrics:
        metric.sign()
        if metric.name not in values:
            msg = f"no values for metric {metric.name!r}"
            raise ValueError(msg)
        fitted.append(within_device_effects(values[metric.name], s, versions=versions, trend=trend))
    comparisons = []
    for v in range(1, versions):
        for j, (metric, (effects, control)) in enumerate(zip(metrics, fitted, strict=True)):
            ok = np.isfinite(effects[:, v - 1]) & np.isfinite(control)
            path = paired_path(
                effects[ok, v - 1],
                control[ok],
                planned_devices=max(planned_devices, 2),
                alpha_side=a_side,
                min_devices=min_devices,
            )
            comparisons.append(Comparison(version_names[v], metric, j == 0, path, int(ok.sum())))
    devices = tuple(c.devices for c in comparisons if c.primary)
    return summarize("time_slice", comparisons, alpha=alpha, correction=correction, devices=devices)
