"""Fixed-horizon comparisons of device-level aggregates, treatment (canary) vs control (holdout).

The unit of analysis is the device. Inferences on one device share its
hardware, inputs and operator, so they are correlated; treating them as
independent understates the variance, often by an order of magnitude. Every
estimator here therefore takes one value per device (optionally weighted, e.g.
by inference count) and uses the between-device spread for its standard error.
A weighted mean of per-device values with weights ``w`` is the ratio estimator
Σ wᵢyᵢ / Σ wᵢ, whose cluster-robust (CR1) variance is used throughout:

    Var(ȳ_w) = n/(n-1) · Σ wᵢ² (yᵢ - ȳ_w)² / (Σ wᵢ)²

(Cameron & Miller 2015, "A practitioner's guide to cluster-robust inference",
eq. 11, for the intercept-only regression). Equal weights give s²/n.

These are for reports, A/B lift and offline checks at one look. Gates that the
reconciler evaluates again and again must use :mod:`modelfleet.stats._sequential`.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, as_counts, as_values, check_probability
from modelfleet.stats._scipy import ndtri

__all__ = [
    "Estimate",
    "RatioEstimate",
    "cluster_robust_difference",
    "difference_in_means",
    "difference_in_proportions",
    "ratio_of_means",
]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A treatment − control difference with its standard error.

    Attributes:
        estimate: treatment mean minus control mean.
        standard_error: standard error of ``estimate`` (between-device).
        n_treatment: devices in the treatment arm.
        n_control: devices in the control arm.
    """

    estimate: float
    standard_error: float
    n_treatment: int
    n_control: int

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Return the two-sided normal-approximation interval at one look (not for repeated looks)."""
        z = ndtri(0.5 + check_probability(confidence, "confidence") / 2.0)
        return self.estimate - z * self.standard_error, self.estimate + z * self.standard_error


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """A treatment / control ratio of means, with its standard error on the log scale.

    Attributes:
        ratio: treatment mean divided by control mean.
        log_ratio: natural log of ``ratio``.
        log_standard_error: delta-method standard error of ``log_ratio``.
        n_treatment: devices in the treatment arm.
        n_control: devices in the control arm.
    """

    ratio: float
    log_ratio: float
    log_standard_error: float
    n_treatment: int
    n_control: int

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Return the interval for the ratio, built on the log scale and exponentiated."""
        z = ndtri(0.5 + check_probability(confidence, "confidence") / 2.0)
        half = z * self.log_standard_error
        return math.exp(self.log_ratio - half), math.exp(self.log_ratio + half)


@dataclass(frozen=True, slots=True)
class _ArmMean:
    """Weighted mean of one arm's device values and its CR1 variance."""

    mean: float
    variance: float
    devices: int


def _arm_mean(values: ArrayLike, weights: ArrayLike | None, name: str) -> _ArmMean:
    """Return the weighted mean and its cluster-robust variance (Cameron & Miller 2015, eq. 11)."""
    y = as_values(values, f"{name} values")
    w = np.ones_like(y) if weights is None else as_counts(weights, f"{name} weights")
    if y.ndim != 1 or w.shape != y.shape:
        msg = f"{name} values and weights must be 1-D and of equal length"
        raise ValueError(msg)
    keep = w > 0
    y, w = y[keep], w[keep]
    n = int(y.size)
    if n < 2:  # noqa: PLR2004 - a variance needs two devices
        msg = f"{name} needs at least two devices with positive weight, got {n}"
        raise ValueError(msg)
    total = float(w.sum())
    mean = float(np.dot(w, y) / total)
    residual = w * (y - mean)
    variance = n / (n - 1) * float(np.dot(residual, residual)) / total**2
    return _ArmMean(mean=mean, variance=variance, devices=n)


def difference_in_means(
    treatment: ArrayLike,
    control: ArrayLike,
    *,
    treatment_weights: ArrayLike | None = None,
    control_weights: ArrayLike | None = None,
) -> Estimate:
    """Estimate mean(treatment) − mean(control) over devices, with a Welch-type standard error.

    Args:
        treatment: one value per treatment device (e.g. its mean latency or confidence).
        control: one value per control device.
        treatment_weights: optional weight per treatment device (e.g. inference count).
        control_weights: optional weight per control device.

    Raises:
        ValueError: an arm has fewer than two devices with positive weight, or values are not finite.
    """
    t = _arm_mean(treatment, treatment_weights, "treatment")
    c = _arm_mean(control, control_weights, "control")
    return Estimate(
        estimate=t.mean - c.mean,
        standard_error=math.sqrt(t.variance + c.variance),
        n_treatment=t.devices,
        n_control=c.devices,
    )


def difference_in_proportions(
    treatment: ArrayLike,
    control: ArrayLike,
    *,
    treatment_weights: ArrayLike | None = None,
    control_weights: ArrayLike | None = None,
) -> Estimate:
    """Estimate the difference of per-device proportions (error rate, accuracy), weighted or not.

    With weights equal to each device's trial count this is the pooled rate
    Σ successes / Σ trials per arm, with the cluster-robust standard error that
    counts devices, not trials, as independent.

    Raises:
        ValueError: a proportion lies outside [0, 1], or as :func:`difference_in_means`.
    """
    for name, values in (("treatment", treatment), ("control", control)):
        array = as_values(values, f"{name} proportions")
        if np.any((array < 0.0) | (array > 1.0)):
            msg = f"{name} proportions must lie in [0, 1]"
            raise ValueError(msg)
    return difference_in_means(treatment, control, treatment_weights=treatment_weights, control_weights=control_weights)


def cluster_robust_difference(
    treatment_sums: ArrayLike,
    treatment_counts: ArrayLike,
    control_sums: ArrayLike,
    control_counts: ArrayLike,
) -> Estimate:
    """Difference of pooled ratios Σ sum / Σ count per arm, with devices as clusters.

    Each device reports a (sum, count) pair, e.g. (errors, inferences) or
    (total latency, inferences). The per-arm estimate is the ratio estimator and
    its variance is CR1 with one cluster per device; devices with count 0 carry
    no information and are dropped.

    Raises:
        ValueError: shapes differ, counts are negative, or an arm has fewer than two devices with data.
    """
    arms: list[tuple[FloatArray, FloatArray]] = []
    for name, sums, counts in (
        ("treatment", treatment_sums, treatment_counts),
        ("control", control_sums, control_counts),
    ):
        s = as_values(sums, f"{name} sums")
        n = as_counts(counts, f"{name} counts")
        if s.shape != n.shape or s.ndim != 1:
            msg = f"{name} sums and counts must be 1-D and of equal length"
            raise ValueError(msg)
        keep = n > 0
        arms.append((s[keep] / n[keep], n[keep]))
    (t_values, t_counts), (c_values, c_counts) = arms
    return difference_in_means(t_values, c_values, treatment_weights=t_counts, control_weights=c_counts)


def ratio_of_means(
    treatment: ArrayLike,
    control: ArrayLike,
    *,
    treatment_weights: ArrayLike | None = None,
    control_weights: ArrayLike | None = None,
) -> RatioEstimate:
    """Estimate mean(treatment) / mean(control) (e.g. latency) by the delta method on the log scale.

    Var(log ȳ_T − log ȳ_C) ≈ Var(ȳ_T)/ȳ_T² + Var(ȳ_C)/ȳ_C² (first-order Taylor
    expansion; Casella & Berger 2002, §5.5.4), using the CR1 variances above.

    Raises:
        ValueError: an arm's mean is not positive, or as :func:`difference_in_means`.
    """
    t = _arm_mean(treatment, treatment_weights, "treatment")
    c = _arm_mean(control, control_weights, "control")
    if t.mean <= 0 or c.mean <= 0:
        msg = "a ratio of means needs positive means in both arms"
        raise ValueError(msg)
    return RatioEstimate(
        ratio=t.mean / c.mean,
        log_ratio=math.log(t.mean) - math.log(c.mean),
        log_standard_error=math.sqrt(t.variance / t.mean**2 + c.variance / c.mean**2),
        n_treatment=t.devices,
        n_control=c.devices,
    )
