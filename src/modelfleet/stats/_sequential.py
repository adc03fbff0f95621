"""Always-valid confidence sequences and p-values for a treatment − control difference of device means.

**Observations are devices.** A device enters the stream once it has completed
its exposure window, with one final value (its error rate, mean latency, mean
confidence, ...); devices are i.i.d. across the stream given random assignment,
inferences inside a device are never counted as separate observations.

**The stream.** Canary (Z=1) and holdout (Z=0) may be unbalanced (10–50 %
holdout), so the two arms do not grow in lockstep and a paired-difference
stream does not exist. We use the augmented inverse-probability-weighted
(difference-estimator) pseudo-outcome of Waudby-Smith, Arbour, Sinha, Kennedy &
Ramdas (2021), "Time-uniform central limit theory and asymptotic confidence
sequences" (arXiv:2103.06476), in its sequential randomized-experiment setting:

    ψᵢ = (m₁ − m₀) + Zᵢ(Yᵢ − m₁)/p − (1 − Zᵢ)(Yᵢ − m₀)/(1 − p),

where p is the *design* probability that a compared device is a canary and
m₁, m₀ are the arm means of devices 1..i−1 (the pooled mean while an arm is
still empty). Because m₁, m₀ never use device i's own outcome and Zᵢ is
independent of the past, E[ψᵢ | past] = Δ = μ₁ − μ₀ exactly, whatever the
centering; a good centering only reduces the variance, to the efficient
σ₁²/p + σ₀²/(1 − p) once m₁, m₀ settle (an un-centred IPW stream would add
μ²/(p(1 − p)), ruinous for latency in milliseconds). The first device only seeds
the centering and contributes no ψ.

**The boundary.** With ψ̄_t the running mean of ψ₁..ψ_t and σ̂_t its
standard deviation (below), the bounds are

    ψ̄_t ± σ̂_t · u_α(t) / t,

u_α the exact one-sided normal-mixture boundary of Howard et al. (2021) for a
standardized sum (:mod:`modelfleet.stats._boundary`), tuned at the planned
number of devices. This is the asymptotic confidence sequence (AsympCS) of
Waudby-Smith et al. (2021, §2, here with the one-sided mixture); each bound has
crossing probability ≤ α over *all* looks, asymptotically, so the reconciler may
look after every device. Each side has its own α (``alpha_lower``,
``alpha_upper``): the two-sided coverage is 1 − α_lower − α_upper.

**The variance.** σ̂_t² = max(s_t², σ̂²_pool/(p(1 − p))): s_t² is the sample
variance of ψ₁..ψ_t (consistent for Var ψ whatever the arms' variances), and
σ̂²_pool is Student's pooled within-arm variance of the device values, i.e.
Var ψ if both arms shared one variance. Per-device error rates are skewed (most
devices near 0, a long right tail); with a 10 % holdout the small arm's sample
variance is low exactly when its mean is low (no tail device has arrived yet),
and the plain AsympCS then rolled back 9.5 % of A/A runs at α = 0.05 in our
simulations. The pooled term leans on the large arm, breaks that correlation
(1.3 % in the same simulations), and since max(·) only widens the interval and
s_t² stays consistent, asymptotic validity is untouched; the price is some power
when the arms' variances truly differ. Bounds stay infinite until each arm
holds ``min_devices_per_arm`` devices, before which σ̂ means little.

For a relative (ratio) gate, such as latency, feed log device values and a
margin of log(1 + m): the gate then compares geometric means.

**Always-valid p-values** (mixture SPRT; Johari, Koomen, Pekelis & Walsh 2017,
"Peeking at A/B tests", KDD; Howard et al. 2021): p_t = min(1, min_{s≤t} 1/M_s)
with M the same normal mixture evaluated at the standardized sum. The one-sided
p-value falls below α at the look where the matching bound crosses the null.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import (
    BoolArray,
    FloatArray,
    IntArray,
    as_flags,
    as_values,
    check_alpha,
    check_probability,
    float_array,
)
from modelfleet.stats._boundary import (
    mixture_rho,
    one_sided_boundary,
    one_sided_log_mixture,
    two_sided_log_mixture,
)

__all__ = [
    "DEFAULT_MIN_DEVICES_PER_ARM",
    "Alternative",
    "ConfidenceSequence",
    "ConfidenceSequencePath",
    "always_valid_p_value",
    "confidence_sequence",
    "confidence_sequence_path",
    "difference_stream",
]

DEFAULT_MIN_DEVICES_PER_ARM = 20
"""Devices each arm needs before a bound is finite; below it the CLT behind the AsympCS is not trusted."""

Alternative = Literal["less", "greater", "two-sided"]


@dataclass(frozen=True, slots=True)
class ConfidenceSequence:
    """The confidence sequence for Δ = mean(treatment) − mean(control) at the latest look.

    Attributes:
        estimate: running mean of the pseudo-outcomes ψ (unbiased for Δ).
        lower: lower bound; P(Δ < lower at any look) ≤ ``alpha_lower`` (asymptotically).
        upper: upper bound; P(Δ > upper at any look) ≤ ``alpha_upper`` (asymptotically).
        alpha_lower: crossing probability of the lower bound.
        alpha_upper: crossing probability of the upper bound.
        standard_deviation: σ̂ of the ψ stream (device-level, inflated by the IPW weights).
        n_treatment: treatment devices seen.
        n_control: control devices seen.
        planned_devices: the sample size the boundary was tuned for.
    """

    estimate: float
    lower: float
    upper: float
    alpha_lower: float
    alpha_upper: float
    standard_deviation: float
    n_treatment: int
    n_control: int
    planned_devices: int

    @property
    def ready(self) -> bool:
        """Whether both arms had enough devices for finite bounds."""
        return math.isfinite(self.lower) and math.isfinite(self.upper)


@dataclass(frozen=True, slots=True)
class ConfidenceSequencePath:
    """The confidence sequence after every device; arrays end in the look axis, one look per device.

    Look ``k`` is the state after ``k + 1`` devices have arrived. Leading axes,
    if any, index independent streams (simulated rollouts).
    """

    estimate: FloatArray
    lower: FloatArray
    upper: FloatArray
    standard_deviation: FloatArray
    n_treatment: IntArray
    n_control: IntArray
    alpha_lower: float
    alpha_upper: float
    planned_devices: int

    def at(self, look: int = -1) -> ConfidenceSequence:
        """Return the one-stream confidence sequence at ``look`` (default: the latest)."""
        if self.estimate.ndim != 1:
            msg = "ConfidenceSequencePath.at needs a single stream; index the leading axes first"
            raise ValueError(msg)
        return ConfidenceSequence(
            estimate=float(self.estimate[look]),
            lower=float(self.lower[look]),
            upper=float(self.upper[look]),
            alpha_lower=self.alpha_lower,
            alpha_upper=self.alpha_upper,
            standard_deviation=float(self.standard_deviation[look]),
            n_treatment=int(self.n_treatment[look]),
            n_control=int(self.n_control[look]),
            planned_devices=self.planned_devices,
        )


def _exclusive_cumsum(x: FloatArray) -> FloatArray:
    """Return Σ_{j<i} x_j along the last axis (the information before device i)."""
    out = np.zeros_like(x)
    np.cumsum(x[..., :-1], axis=-1, out=out[..., 1:])
    return out


def difference_stream(values: ArrayLike, treated: ArrayLike, treatment_probability: float) -> FloatArray:
    """Return the AIPW pseudo-outcomes ψ₂..ψ_n (Waudby-Smith et al. 2021) along the last axis.

    Args:
        values: device values in arrival order, shape ``[..., n]``.
        treated: whether each device is a canary (1) or holdout (0), same shape.
        treatment_probability: design probability p that a compared device is a canary.

    Returns:
        ψ for devices 2..n (device 1 only seeds the centering), shape ``[..., n - 1]``.
    """
    y = as_values(values, "values")
    z = as_flags(treated, "treated").astype(np.float64)
    p = check_probability(treatment_probability, "treatment_probability")
    if y.shape != z.shape:
        msg = f"values {y.shape} and treated {z.shape} differ in shape"
        raise ValueError(msg)
    seen = np.arange(y.shape[-1], dtype=np.float64)
    sum_t, count_t = _exclusive_cumsum(y * z), _exclusive_cumsum(z)
    sum_all = _exclusive_cumsum(y)
    sum_c, count_c = sum_all - sum_t, seen - count_t
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = sum_all / seen
        m1 = np.where(count_t > 0, sum_t / np.maximum(count_t, 1.0), pooled)
        m0 = np.where(count_c > 0, sum_c / np.maximum(count_c, 1.0), pooled)
    psi = (m1 - m0) + z * (y - m1) / p - (1.0 - z) * (y - m0) / (1.0 - p)
    return psi[..., 1:]


@dataclass(frozen=True, slots=True)
class _Moments:
    """Running mean and standard deviation of ψ, look by look (one look per device, first look empty)."""

    mean: FloatArray
    std: FloatArray
    count: FloatArray
    ready: BoolArray
    n_treatment: IntArray
    n_control: IntArray


def _pooled_floor(values: ArrayLike, treated: BoolArray, p: float) -> FloatArray:
    """Return σ̂²_pool/(p(1 − p)) at every look: Var(ψ) if both arms shared one variance.

    σ̂²_pool is Student's pooled within-arm variance (SS₁ + SS₀)/(n − 2), which
    leans on the larger arm; see the module docstring for why it floors σ̂².
    """
    y = np.asarray(values, dtype=np.float64)
    y = y - y.mean(axis=-1, keepdims=True)  # a constant shift keeps the running sums from cancelling
    within = np.zeros_like(y)
    for arm in (treated, ~treated):
        w = arm.astype(np.float64)
        n = np.cumsum(w, axis=-1)
        total = np.cumsum(w * y, axis=-1)
        within += np.cumsum(w * y * y, axis=-1) - total * total / np.maximum(n, 1.0)
    dof = np.maximum(np.arange(1, y.shape[-1] + 1, dtype=np.float64) - 2.0, 1.0)
    return float_array(np.maximum(within, 0.0) / dof / (p * (1.0 - p)))


def _running_moments(values: ArrayLike, treated: ArrayLike, p: float, min_devices_per_arm: int) -> _Moments:
    """Return the running moments of the ψ stream, padded so that look k covers devices 0..k."""
    psi = difference_stream(values, treated, p)
    z = as_flags(treated, "treated")
    n_treatment = np.cumsum(z, axis=-1, dtype=np.int64)
    n_control = np.arange(1, z.shape[-1] + 1, dtype=np.int64) - n_treatment
    # Variance is shift-invariant: centre on the stream mean so the running sums do not cancel.
    shifted = psi - psi.mean(axis=-1, keepdims=True) if psi.shape[-1] else psi
    count = np.arange(1, psi.shape[-1] + 1, dtype=np.float64)
    mean_shifted = np.cumsum(shifted, axis=-1) / count
    variance = np.maximum(np.cumsum(shifted * shifted, axis=-1) / count - mean_shifted**2, 0.0)
    pad = [(0, 0)] * (psi.ndim - 1) + [(1, 0)]
    variance = np.maximum(np.pad(variance, pad, constant_values=np.nan), _pooled_floor(values, z, p))
    ready = (n_treatment >= min_devices_per_arm) & (n_control >= min_devices_per_arm)
    return _Moments(
        mean=np.pad(np.cumsum(psi, axis=-1) / count, pad, constant_values=np.nan),
        std=np.sqrt(variance),
        count=np.arange(z.shape[-1], dtype=np.float64),
        ready=ready,
        n_treatment=n_treatment,
        n_control=n_control,
    )


def _check_design(planned_devices: int, min_devices_per_arm: int) -> None:
    """Refuse a planned size or burn-in that cannot describe a stage."""
    if planned_devices < 2:  # noqa: PLR2004 - a comparison needs two devices
        msg = f"planned_devices must be at least 2, got {planned_devices!r}"
        raise ValueError(msg)
    if min_devices_per_arm < 2:  # noqa: PLR2004 - a variance needs two devices per arm
        msg = f"min_devices_per_arm must be at least 2, got {min_devices_per_arm!r}"
        raise ValueError(msg)


def confidence_sequence_path(
    values: ArrayLike,
    treated: ArrayLike,
    *,
    treatment_probability: float,
    planned_devices: int,
    alpha: float = 0.01,
    alpha_upper: float | None = None,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> ConfidenceSequencePath:
    """Return the confidence sequence for Δ after every device (vectorized over leading axes).

    Args:
        values: device values in the order devices completed exposure, shape ``[..., n]``.
        treated: canary (1) or holdout (0) per device, same shape.
        treatment_probability: design share of canaries among compared devices.
        planned_devices: compared devices the stage plans to reach; the boundary is tightest there.
        alpha: crossing probability of the lower bound (and of the upper one unless given).
        alpha_upper: crossing probability of the upper bound, if it differs.
        min_devices_per_arm: devices each arm needs before bounds are finite.
    """
    _check_design(planned_devices, min_devices_per_arm)
    a_lo = check_alpha(alpha)
    a_up = check_alpha(alpha if alpha_upper is None else alpha_upper, "alpha_upper")
    moments = _running_moments(values, treated, treatment_probability, min_devices_per_arm)
    t = np.maximum(moments.count, 1.0)
    scale = moments.std / t
    below = one_sided_boundary(moments.count, a_lo, mixture_rho(planned_devices, a_lo)) * scale
    above = one_sided_boundary(moments.count, a_up, mixture_rho(planned_devices, a_up)) * scale
    return ConfidenceSequencePath(
        estimate=moments.mean,
        lower=np.where(moments.ready, moments.mean - below, -np.inf),
        upper=np.where(moments.ready, moments.mean + above, np.inf),
        standard_deviation=moments.std,
        n_treatment=moments.n_treatment,
        n_control=moments.n_control,
        alpha_lower=a_lo,
        alpha_upper=a_up,
        planned_devices=planned_devices,
    )


def confidence_sequence(
    values: ArrayLike,
    treated: ArrayLike,
    *,
    treatment_probability: float,
    planned_devices: int,
    alpha: float = 0.01,
    alpha_upper: float | None = None,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> ConfidenceSequence:
    """Return the confidence sequence for Δ after the latest device; see :func:`confidence_sequence_path`.

    Raises:
        ValueError: fewer than two devices, or arguments out of range.
    """
    y = as_values(values, "values")
    if y.ndim != 1 or y.size < 2:  # noqa: PLR2004 - device 1 only seeds the centering
        msg = "confidence_sequence needs a 1-D stream of at least two devices"
        raise ValueError(msg)
    return confidence_sequence_path(
        y,
        treated,
        treatment_probability=treatment_probability,
        planned_devices=planned_devices,
        alpha=alpha,
        alpha_upper=alpha_upper,
        min_devices_per_arm=min_devices_per_arm,
    ).at(-1)


def _log_mixture_path(moments: _Moments, null: float, alternative: Alternative, rho: float) -> FloatArray:
    """Return log M at every look for the standardized sum t(ψ̄ − null)/σ̂ (σ̂ = 0 gives ±∞ evidence)."""
    t = moments.count
    centred = t * (moments.mean - null)
    if alternative == "less":
        centred = -centred
    with np.errstate(divide="ignore", invalid="ignore"):
        sums = np.where(moments.std > 0, centred / moments.std, np.sign(centred) * np.inf)
    sums = np.nan_to_num(sums, nan=0.0, posinf=1e150, neginf=-1e150)
    if alternative == "two-sided":
        return two_sided_log_mixture(sums, t, rho)
    return one_sided_log_mixture(sums, t, rho)


def always_valid_p_value(
    values: ArrayLike,
    treated: ArrayLike,
    *,
    treatment_probability: float,
    planned_devices: int,
    null: float = 0.0,
    alternative: Alternative = "two-sided",
    alpha: float = 0.01,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> float:
    """Return the mixture-SPRT always-valid p-value for H0: Δ = ``null``, min over every look so far.

    P(p ≤ a at any look) ≤ a for every a under H0 (Ville's inequality); it is a
    valid input to Holm or Benjamini–Hochberg at any stopping time.

    Args:
        values: device values in arrival order.
        treated: canary (1) or holdout (0) per device.
        treatment_probability: design share of canaries.
        planned_devices: planned compared devices (sets the mixture ρ).
        null: the Δ under H0.
        alternative: ``"less"`` (Δ < null), ``"greater"`` (Δ > null) or ``"two-sided"``.
        alpha: the level ρ is tuned for; with the same arguments, a one-sided p ≤ alpha exactly
            when the matching confidence-sequence bound has excluded ``null`` at some look.
        min_devices_per_arm: looks before both arms hold this many devices are ignored.
    """
    _check_design(planned_devices, min_devices_per_arm)
    a = check_alpha(alpha)
    rho = mixture_rho(planned_devices, a / 2.0 if alternative == "two-sided" else a)
    moments = _running_moments(values, treated, treatment_probability, min_devices_per_arm)
    log_m = _log_mixture_path(moments, null, alternative, rho)
    best = float(np.max(np.where(moments.ready, log_m, -np.inf), initial=-np.inf))
    return float(min(1.0, math.exp(-best))) if best > -math.inf else 1.0
