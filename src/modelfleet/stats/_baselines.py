"""The gates ours is measured against: a fixed-horizon test, the same test at every look, a failure threshold.

Used by ``bench/gates.py`` and the error-rate tests, on the same device streams
as the sequential gate (:func:`modelfleet.stats.compare_gates`):

- **Fixed horizon.** The one-sided Welch z-interval of the device-level
  difference in means, d ± z_{1−α}·sqrt(s₁²/n₁ + s₀²/n₀), read once, at the
  sample size planned for one look,

      n = ((z_power + z_{1−α})·σ_ψ / margin)²,

  the textbook normal power equation (Jennison & Turnbull 2000, ch. 2) with the
  efficient σ_ψ = sqrt(σ₁²/p + σ₀²/(1 − p)) that :func:`modelfleet.stats.plan_stage`
  uses (before the gate's variance floor), so the two plans differ in z_{1−α}
  against the sequential b_α. Valid at that one look, and only there.
- **Naive peeking.** The same interval read at every look with the gate rule of
  :func:`modelfleet.stats.decision_codes`: what a reconciler gets from a
  fixed-horizon test re-evaluated every time it runs (Argo Rollouts' and
  Flagger's analysis runs do this with fixed thresholds). Every look is a
  level-α test; the chance that *some* look crosses grows with the looks.
- **Failure threshold.** hawkBit's rollout-group ``errorCondition`` (errors /
  total > x %) and AWS IoT Jobs' ``abortConfig`` (``thresholdPercentage`` once
  ``minNumberOfExecutedThings`` have run): abort when the canaries' failure
  share exceeds a fixed threshold after a minimum count. No holdout, no
  variance, no correction for looks; and it only sees failures, so a model
  that loses accuracy without erroring passes it.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import BoolArray, FloatArray, as_flags, as_values, check_alpha, check_probability
from modelfleet.stats._gate import Direction, _sign
from modelfleet.stats._power import _efficient_stream_sd
from modelfleet.stats._scipy import ndtri
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM

__all__ = ["fixed_horizon_bounds", "fixed_horizon_devices", "threshold_gate_aborts"]


def fixed_horizon_devices(
    *,
    margin: float,
    device_sd: float,
    holdout_fraction: float,
    control_sd: float | None = None,
    alpha: float = 0.01,
    power: float = 0.9,
) -> int:
    """Return the compared devices a single-look test needs to catch a degradation of ``margin`` with ``power``.

    Takes the same device spreads as :func:`modelfleet.stats.plan_stage`; the
    Welch interval has no variance floor, so it is planned on the efficient σ_ψ.

    Args:
        margin: the degradation to catch (> 0), in the metric's units.
        device_sd: sd of one canary device's value.
        holdout_fraction: share of compared devices that are holdout, in (0, 1).
        control_sd: sd of a holdout device's value, if it differs from ``device_sd``.
        alpha: the one-sided level of the test.
        power: P(rollback at the look | Δ = −margin).
    """
    if not 0.0 < margin < math.inf:
        msg = "margin must be positive and finite"
        raise ValueError(msg)
    sd = _efficient_stream_sd(device_sd, control_sd, check_probability(holdout_fraction, "holdout_fraction"))
    z = ndtri(check_probability(power, "power")) - ndtri(check_alpha(alpha))
    return math.ceil((z * sd / margin) ** 2)


def _arm_moments(values: FloatArray, arm: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return the running count, mean and sample variance of one arm along the last axis."""
    w = arm.astype(np.float64)
    n = np.cumsum(w, axis=-1)
    total = np.cumsum(w * values, axis=-1)
    squares = np.cumsum(w * values * values, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        variance = np.maximum(squares - n * mean * mean, 0.0) / (n - 1.0)
    return n, mean, variance


def fixed_horizon_bounds(
    values: ArrayLike,
    treated: ArrayLike,
    *,
    alpha: float = 0.01,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> tuple[FloatArray, FloatArray]:
    """Return the one-sided Welch z-bounds (lower, upper) of Δ after every device, each at level ``alpha``.

    Arrays end in the look axis like :func:`modelfleet.stats.confidence_sequence_path`
    (look k is after k + 1 devices); bounds are infinite until each arm has
    ``min_devices_per_arm`` devices. Valid at one look fixed in advance only.
    """
    y = as_values(values, "values")
    z = as_flags(treated, "treated")
    if y.shape != z.shape:
        msg = f"values {y.shape} and treated {z.shape} differ in shape"
        raise ValueError(msg)
    y = y - y.mean(axis=-1, keepdims=True)  # the difference is shift-invariant; the running sums cancel less
    n1, m1, v1 = _arm_moments(y, z)
    n0, m0, v0 = _arm_moments(y, ~z)
    ready = (n1 >= min_devices_per_arm) & (n0 >= min_devices_per_arm)
    with np.errstate(divide="ignore", invalid="ignore"):
        half_width = -ndtri(check_alpha(alpha)) * np.sqrt(v1 / n1 + v0 / n0)
    lower = np.where(ready, m1 - m0 - half_width, -np.inf)
    upper = np.where(ready, m1 - m0 + half_width, np.inf)
    return lower, upper


def threshold_gate_aborts(
    failures: ArrayLike,
    treated: ArrayLike,
    *,
    threshold: float,
    min_treated: int,
    direction: Direction = "lower_is_better",
) -> BoolArray:
    """Return, after every device, whether a hawkBit/AWS-style failure-threshold gate aborts.

    It aborts when the mean of the canaries' per-device failure values (0/1
    failed, or each device's error rate) is worse than ``threshold`` and at
    least ``min_treated`` canaries have reported. Holdout devices are ignored.

    Args:
        failures: per-device failure values in arrival order, shape ``[..., n]``.
        treated: canary (1) or holdout (0) per device, same shape.
        threshold: the failure share the gate tolerates.
        min_treated: canaries needed before it may abort (AWS ``minNumberOfExecutedThings``).
        direction: ``"lower_is_better"`` for failures; ``"higher_is_better"`` aborts below the threshold.
    """
    y = as_values(failures, "failures")
    z = as_flags(treated, "treated")
    if y.shape != z.shape:
        msg = f"failures {y.shape} and treated {z.shape} differ in shape"
        raise ValueError(msg)
    if min_treated < 1:
        msg = f"min_treated must be positive, got {min_treated!r}"
        raise ValueError(msg)
    n, mean, _ = _arm_moments(y, z)
    worse = _sign(direction) * (mean - threshold) < 0.0
    return (n >= min_treated) & worse
