"""Shadow experiments: the candidate answers the same inputs as the active model on the same device.

The device is the unit (cluster-robust by construction): every device's
``ShadowStats`` are first reduced to one number per quantity — its top-1
agreement rate, its mean confidence under each model, its mean latency under
each model, and, with labels, its accuracy difference

    dᵢ = (only_candidate_correctᵢ − only_active_correctᵢ) / n_labelledᵢ,

the paired (McNemar) contrast of that device: only the discordant inferences,
where exactly one model was right, move it. Inferences of one device share
inputs and hardware, so pooling the discordant counts of the whole fleet into
one McNemar test would treat thousands of correlated pairs as independent;
averaging dᵢ over devices does not.

**Sequential, not fixed-horizon.** The accuracy (primary) and latency (guard)
contrasts run on the paired asymptotic confidence sequence of
:mod:`modelfleet.stats._streams` with always-valid p-values, corrected by Holm
or BH. ``status`` is read again and again while the shadow runs, and a
McNemar test planned for one look would over-reject under that peeking; the
price is the sequential boundary (the plan counts 1.6–1.9× the devices of one
planned look, see ADR 0007), small next to what pairing saves against A/B.
The pooled discordant counts (b, c) are returned for reference only.

**The latency guard has a relative margin.** The agent scores the candidate
after the active model, in a background thread, with colder caches: on the
same device and inputs a candidate of the active model's own size measures
10–25 % slower. A guard at zero margin calls such a candidate a loser once
enough devices report. The guard therefore tests each device's log latency
ratio against a non-inferiority margin m (``latency_margin``, default 25 %):

    rᵢ = log(candidate_msᵢ / active_msᵢ) − log(1 + m),

run through the same paired stream, so the candidate is **worse** only when
its geometric-mean slowdown is shown to exceed 1 + m (at exactly 1 + m the
guard fails, at any look, with probability ≤ α/2 asymptotically; below it less
often), and its **better** side says "less than m slower" (non-inferiority
shown), not faster. Ratios rather than differences: the scoring bias is
multiplicative, a ratio weighs a Pi's slowdown like a Jetson's (the device is
the unit), and logs tame the heavy tails that scheduling hiccups give device
latencies. The candidate's signed latency budget is not a second bound here:
the device's health check already holds the candidate to it, in the
foreground, before it shadows (docs/adr/0007-experiment-analysis.md, "Shadow
latency guard margin").

Agreement and the confidence difference are descriptive (a candidate that is
less confident may be better calibrated): they get confidence sequences at
level α but take no part in the verdict. Without labels a shadow cannot name a
winner; it can still find the candidate slower (a loser).
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, as_counts, as_values, check_probability
from modelfleet.stats._experiments import (
    Comparison,
    Correction,
    ExperimentAnalysis,
    ExperimentMetric,
    side_alpha,
    summarize,
)
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM
from modelfleet.stats._streams import StreamPath, paired_path

__all__ = [
    "DEFAULT_SHADOW_LATENCY_MARGIN",
    "SHADOW_ACCURACY",
    "SHADOW_LATENCY",
    "DeviceInterval",
    "ShadowAnalysis",
    "ShadowLabels",
    "analyze_shadow",
]

SHADOW_ACCURACY = ExperimentMetric("accuracy", "higher_is_better")
SHADOW_LATENCY = ExperimentMetric("latency_ms", "lower_is_better")

DEFAULT_SHADOW_LATENCY_MARGIN = 0.25
"""How much slower (a share) the shadow candidate may measure than the active model before the guard fails."""


@dataclass(frozen=True, slots=True)
class DeviceInterval:
    """A device-level mean with its two-sided confidence sequence at level α.

    Attributes:
        estimate: the mean over devices.
        lower: lower bound (−inf before the burn-in).
        upper: upper bound (+inf before the burn-in).
        devices: devices averaged.
    """

    estimate: float
    lower: float
    upper: float
    devices: int


@dataclass(frozen=True, slots=True)
class ShadowLabels:
    """Labelled correctness of both models per device (from ``ShadowStats``), in the same device order.

    Attributes:
        n_labelled: labelled inferences per device.
        active_correct: of those, answered right by the active model.
        only_active_correct: right by the active model only.
        only_candidate_correct: right by the candidate only.
    """

    n_labelled: ArrayLike
    active_correct: ArrayLike
    only_active_correct: ArrayLike
    only_candidate_correct: ArrayLike


@dataclass(frozen=True, slots=True)
class ShadowAnalysis:
    """A shadow experiment at the latest look.

    Attributes:
        analysis: the verdict, with the accuracy (when labelled) and latency lifts of candidate − active.
        agreement: the device-mean share of inferences where both models gave the same top-1 answer.
        confidence_difference: device-mean (candidate − active) top-1 confidence.
        active_latency_ms: device-mean latency of the active model.
        candidate_latency_ms: device-mean latency of the candidate.
        latency_margin: the latency guard's margin: the candidate fails it only when shown more than this
            share slower (geometric mean of the per-device ratios).
        discordant: pooled (only active right, only candidate right) counts, McNemar's (b, c), for reference.
    """

    analysis: ExperimentAnalysis
    agreement: DeviceInterval
    confidence_difference: DeviceInterval
    active_latency_ms: float
    candidate_latency_ms: float
    latency_margin: float
    discordant: tuple[int, int]


def _interval(values: FloatArray, planned: int, alpha: float, min_devices: int) -> DeviceInterval:
    """Return the device mean of ``values`` with its confidence sequence at two-sided level α."""
    if values.size == 0:
        return DeviceInterval(math.nan, -math.inf, math.inf, 0)
    path = paired_path(values, values, planned_devices=planned, alpha_side=alpha / 2.0, min_devices=min_devices)
    return DeviceInterval(float(path.estimate[-1]), float(path.lower[-1]), float(path.upper[-1]), values.size)


def _one_per_device(name: str, values: ArrayLike, n: int) -> FloatArray:
    """Return a per-device array, checked to hold one finite value per device."""
    y = as_values(values, name)
    if y.shape != (n,):
        msg = f"{name} has shape {y.shape}, expected one value per device ({n},)"
        raise ValueError(msg)
    return y


def check_latency_margin(margin: float) -> float:
    """Return a finite, non-negative relative margin."""
    if not 0.0 <= margin < math.inf:
        msg = f"latency_margin must be finite and non-negative, got {margin!r}"
        raise ValueError(msg)
    return float(margin)


def latency_guard_path(
    active_ms: ArrayLike,
    candidate_ms: ArrayLike,
    *,
    margin: float,
    planned_devices: int,
    alpha_side: float,
    min_devices: int,
) -> StreamPath:
    """Return the latency guard's path: per-device log(candidate/active) − log(1 + margin), vectorized over runs.

    Args:
        active_ms: the active model's mean latency per device, positive, ``[..., n]`` in completion order.
        candidate_ms: the candidate's on the same devices, same shape.
        margin: the relative non-inferiority margin (0.25: up to 25 % slower is within it).
        planned_devices: devices the shadow plans; the boundary is tightest there.
        alpha_side: crossing probability of each bound.
        min_devices: devices needed before the bounds are finite.
    """
    active, candidate = as_values(active_ms, "active_latency_ms"), as_values(candidate_ms, "candidate_latency_ms")
    if np.any(active <= 0) or np.any(candidate <= 0):
        msg = "latencies must be positive: the latency guard compares their ratios"
        raise ValueError(msg)
    shift = math.log1p(check_latency_margin(margin))
    return paired_path(
        np.log(candidate) - np.log(active) - shift,
        active,
        planned_devices=planned_devices,
        alpha_side=alpha_side,
        min_devices=min_devices,
    )


def _accuracy(labels: ShadowLabels, keep: np.ndarray, n: int) -> tuple[FloatArray, FloatArray, tuple[int, int]]:
    """Return per-device accuracy differences and active accuracies (labelled devices only) and pooled (b, c)."""
    counts = [
        as_counts(_one_per_device(name, getattr(labels, name), n), name)[keep]
        for name in ("n_labelled", "active_correct", "only_active_correct", "only_candidate_correct")
    ]
    labelled, active, only_active, only_candidate = counts
    if np.any(np.maximum(active, only_active + only_candidate) > labelled):
        msg = "correct counts exceed n_labelled"
        raise ValueError(msg)
    has = labelled > 0
    per = np.maximum(labelled[has], 1.0)
    return (
        (only_candidate[has] - only_active[has]) / per,
        active[has] / per,
        (int(only_active.sum()), int(only_candidate.sum())),
    )


def analyze_shadow(
    *,
    n_compared: ArrayLike,
    n_agree: ArrayLike,
    active_confidence: ArrayLike,
    candidate_confidence: ArrayLike,
    active_latency_ms: ArrayLike,
    candidate_latency_ms: ArrayLike,
    planned_devices: int,
    labels: ShadowLabels | None = None,
    alpha: float = 0.05,
    correction: Correction = "holm",
    candidate: str = "candidate",
    min_devices: int = DEFAULT_MIN_DEVICES_PER_ARM,
    latency_margin: float = DEFAULT_SHADOW_LATENCY_MARGIN,
) -> ShadowAnalysis:
    """Analyse a shadow deployment from per-device aggregates, in the order devices completed their window.

    Args:
        n_compared: inferences both models answered, per device.
        n_agree: of those, the ones with the same top-1 answer.
        active_confidence: the active model's mean top-1 confidence per device.
        candidate_confidence: the candidate's mean top-1 confidence per device.
        active_latency_ms: the active model's mean latency per device (positive).
        candidate_latency_ms: the candidate's mean latency per device (positive).
        planned_devices: devices the shadow plans (from :func:`plan_experiment`).
        labels: labelled correctness per device, if there are labels.
        alpha: family-wise error (Holm) or FDR (BH) of the verdict; level of the descriptive intervals.
        correction: ``"holm"`` or ``"bh"``.
        candidate: the candidate's name in the result.
        min_devices: devices needed before an interval is finite.
        latency_margin: the latency guard's relative margin: the candidate is a loser on latency only when
            shown more than this share slower than the active model (see the module docstring).

    Devices without a compared inference are left out.
    """
    compared = as_counts(n_compared, "n_compared")
    n = compared.size
    agree = as_counts(_one_per_device("n_agree", n_agree, n), "n_agree")
    if compared.ndim != 1 or np.any(agree > compared):
        msg = "n_compared must be 1-D and n_agree may not exceed it"
        raise ValueError(msg)
    check_probability(alpha, "alpha")
    margin = check_latency_margin(latency_margin)
    keep = compared > 0
    conf_a, conf_c, lat_a, lat_c = (
        _one_per_device(name, v, n)[keep]
        for name, v in (
            ("active_confidence", active_confidence),
            ("candidate_confidence", candidate_confidence),
            ("active_latency_ms", active_latency_ms),
            ("candidate_latency_ms", candidate_latency_ms),
        )
    )
    planned = max(planned_devices, 2)
    discordant = (0, 0)
    accuracy = None
    if labels is not None:
        difference, active_accuracy, discordant = _accuracy(labels, keep, n)
        accuracy = (difference, active_accuracy)
    a_side = side_alpha(alpha, 1 if accuracy is None else 2)
    comparisons = []
    if accuracy is not None:
        path = paired_path(*accuracy, planned_devices=planned, alpha_side=a_side, min_devices=min_devices)
        comparisons.append(Comparison(candidate, SHADOW_ACCURACY, primary=True, path=path, devices=accuracy[0].size))
    latency = latency_guard_path(
        lat_a, lat_c, margin=margin, planned_devices=planned, alpha_side=a_side, min_devices=min_devices
    )
    comparisons.append(
        Comparison(candidate, SHADOW_LATENCY, primary=False, path=latency, devices=lat_a.size, ratio_margin=margin)
    )
    analysis = summarize("shadow", comparisons, alpha=alpha, correction=correction, devices=(int(keep.sum()),))
    if labels is None and analysis.verdict == "inconclusive":
        reason = f"no labels: a shadow names no winner without labelled correctness; {analysis.reason}"
        analysis = dataclasses.replace(analysis, reason=reason)
    return ShadowAnalysis(
        analysis=analysis,
        agreement=_interval(agree[keep] / np.maximum(compared[keep], 1.0), planned, alpha, min_devices),
        confidence_difference=_interval(conf_c - conf_a, planned, alpha, min_devices),
        active_latency_ms=float(lat_a.mean()) if lat_a.size else math.nan,
        candidate_latency_ms=float(lat_c.mean()) if lat_c.size else math.nan,
        latency_margin=margin,
        discordant=discordant,
    )
