"""Label-free performance: accuracy estimated from calibrated confidence, and prediction-mix shift.

**CBPE-style accuracy** (confidence-based performance estimation, as in NannyML;
Guo et al. 2017, "On calibration of modern neural networks", for the calibration
map). If P(correct | confidence in bin b) = a_b, the expected accuracy of live
predictions with per-bin counts c_b is

    Â = Σ_b c_b · a_b / n,     n = Σ_b c_b.

a_b comes from the bundle's validation data (correct / predictions per
confidence bin), shrunk by one pseudo-prediction towards the bin midpoint; a
bin the validation set never reached falls back to its midpoint, which is right
for a calibrated model up to half the bin width. The standard error has two
parts: the Bernoulli spread of the realised accuracy around Â,
Σ c_b a_b(1 − a_b)/n², and the uncertainty of the map, Σ (c_b/n)² Var(a_b). Valid under covariate shift while the
calibration holds; it cannot see concept drift (P(y | x) changing), which is
why labelled accuracy, when it exists, overrides it.

**Prediction mix**: a χ² test of homogeneity of predicted-class counts, live
against reference. Live counts pooled over devices are clustered (one device
predicts similar classes all day), so when per-device counts ``[devices,
classes]`` are given the statistic is divided by the Rao–Scott first-order
design effect (Rao & Scott 1981, JASA 76(374)), estimated from the
between-device covariance of the class shares and floored at 1.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, as_counts, as_values, check_probability
from modelfleet.stats._scipy import chi2_sf, ndtri

__all__ = [
    "AccuracyEstimate",
    "CalibrationMap",
    "PredictionMixShift",
    "calibration_map",
    "estimated_accuracy",
    "prediction_mix_shift",
]


@dataclass(frozen=True, slots=True)
class CalibrationMap:
    """Accuracy per confidence bin, measured on validation data.

    Attributes:
        edges: confidence bin edges, ``bins + 1`` increasing finite values.
        accuracy: calibrated accuracy per bin.
        variance: posterior variance of each bin's accuracy.
        support: validation predictions per bin.
    """

    edges: FloatArray
    accuracy: FloatArray
    variance: FloatArray
    support: FloatArray


def calibration_map(
    edges: ArrayLike,
    validation_counts: ArrayLike,
    validation_correct: ArrayLike,
    *,
    prior_strength: float = 1.0,
) -> CalibrationMap:
    """Build the per-bin calibration map from validation predictions and how many were correct.

    Each bin's accuracy is the posterior mean under a Beta prior of
    ``prior_strength`` pseudo-predictions centred on the bin midpoint (what a
    calibrated model would score there): (correct + k·mid)/(predictions + k). An
    empty bin gets the midpoint; a well-supported bin gets its validation
    accuracy. The variance is the Beta posterior's, a(1 − a)/(predictions + k + 1),
    so a thinly supported bin is honestly uncertain instead of falsely exact
    (a raw 3-of-3 bin would claim accuracy 1 with variance 0).

    Raises:
        ValueError: edges are not increasing and finite, shapes disagree, correct exceeds counts,
            or ``prior_strength`` is not positive.
    """
    e = as_values(edges, "edges")
    counts = as_counts(validation_counts, "validation_counts")
    correct = as_counts(validation_correct, "validation_correct")
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):  # noqa: PLR2004 - one bin needs two edges
        msg = "edges must be a 1-D increasing array of at least two values"
        raise ValueError(msg)
    if counts.shape != (e.size - 1,) or correct.shape != counts.shape or np.any(correct > counts):
        msg = "validation counts and correct need one entry per bin, with correct ≤ counts"
        raise ValueError(msg)
    if not 0.0 < prior_strength < math.inf:
        msg = f"prior_strength must be positive, got {prior_strength!r}"
        raise ValueError(msg)
    midpoint = np.clip(0.5 * (e[:-1] + e[1:]), 0.0, 1.0)
    accuracy = (correct + prior_strength * midpoint) / (counts + prior_strength)
    variance = accuracy * (1.0 - accuracy) / (counts + prior_strength + 1.0)
    return CalibrationMap(edges=e, accuracy=accuracy, variance=variance, support=counts)


@dataclass(frozen=True, slots=True)
class AccuracyEstimate:
    """Estimated accuracy of live predictions, without labels.

    Attributes:
        estimate: Σ c_b a_b / n.
        standard_error: of the realised live accuracy around ``estimate`` (see the module docstring).
        predictions: n, the live predictions counted.
    """

    estimate: float
    standard_error: float
    predictions: int

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Return the normal-approximation interval for the realised accuracy, clipped to [0, 1]."""
        z = ndtri(0.5 + check_probability(confidence, "confidence") / 2.0)
        half = z * self.standard_error
        return max(0.0, self.estimate - half), min(1.0, self.estimate + half)


def estimated_accuracy(live_counts: ArrayLike, calibration: CalibrationMap) -> AccuracyEstimate:
    """Estimate accuracy from a live confidence histogram on the calibration map's edges.

    Raises:
        ValueError: the histogram's bins do not match the map, or it is empty.
    """
    c = as_counts(live_counts, "live_counts")
    a = calibration.accuracy
    if c.shape != a.shape:
        msg = f"live histogram has shape {c.shape}, the calibration map {a.shape}"
        raise ValueError(msg)
    n = float(c.sum())
    if n <= 0:
        msg = "the live histogram is empty"
        raise ValueError(msg)
    share = c / n
    variance = float(np.dot(c, a * (1.0 - a))) / n**2 + float(np.dot(share**2, calibration.variance))
    return AccuracyEstimate(estimate=float(np.dot(share, a)), standard_error=math.sqrt(variance), predictions=int(n))


@dataclass(frozen=True, slots=True)
class PredictionMixShift:
    """χ² test that live predicted-class shares differ from the reference.

    Attributes:
        statistic: Pearson's χ² of homogeneity, divided by ``design_effect``.
        dof: degrees of freedom (classes seen on either side − 1).
        p_value: P(χ²_dof ≥ statistic).
        design_effect: Rao–Scott mean design effect of the live counts (1 for a single histogram).
    """

    statistic: float
    dof: int
    p_value: float
    design_effect: float


def _design_effect(per_device: FloatArray, reference: FloatArray) -> float:
    """Return the Rao–Scott first-order design effect of a live-vs-reference share difference, at least 1.

    d̄ = tr(V₀⁻¹ V)/(k − 1) on the first k − 1 classes, V₀ the multinomial covariance of
    the difference under H0 and V the same with the live part replaced by its
    cluster-robust (between-device) covariance.
    """
    totals = per_device.sum(axis=1)
    per_device = per_device[totals > 0]
    totals = totals[totals > 0]
    devices = per_device.shape[0]
    if devices < 2:  # noqa: PLR2004 - a between-device covariance needs two devices
        return 1.0
    n_live, n_ref = float(totals.sum()), float(reference.sum())
    pooled = (per_device.sum(axis=0) + reference) / (n_live + n_ref)
    live_share = per_device.sum(axis=0) / n_live
    residual = (per_device - totals[:, None] * live_share)[:, :-1]
    v_live = devices / (devices - 1.0) * residual.T @ residual / n_live**2
    multinomial = (np.diag(pooled) - np.outer(pooled, pooled))[:-1, :-1]
    v0 = multinomial * (1.0 / n_live + 1.0 / n_ref)
    v = v_live + multinomial / n_ref
    classes = int(pooled.size)
    return max(1.0, float(np.trace(np.linalg.solve(v0, v))) / (classes - 1))


def prediction_mix_shift(live: ArrayLike, reference: ArrayLike) -> PredictionMixShift:
    """Test whether live predicted-class counts differ from the reference counts.

    Args:
        live: predicted-class counts, ``[classes]`` for one histogram or ``[devices, classes]``
            for per-device counts (which turns on the Rao–Scott correction).
        reference: predicted-class counts on the reference (validation) data, ``[classes]``.

    Raises:
        ValueError: shapes disagree, a side is empty, or fewer than two classes were seen.
    """
    live_counts = as_counts(live, "live")
    ref = as_counts(reference, "reference")
    per_device = live_counts if live_counts.ndim == 2 else live_counts[None, :]  # noqa: PLR2004 - [devices, classes]
    if ref.ndim != 1 or per_device.ndim != 2 or per_device.shape[1] != ref.size:  # noqa: PLR2004
        msg = "live must be [classes] or [devices, classes] and reference [classes], with the same classes"
        raise ValueError(msg)
    pooled_live = per_device.sum(axis=0)
    seen = (pooled_live + ref) > 0
    if pooled_live.sum() == 0 or ref.sum() == 0 or int(seen.sum()) < 2:  # noqa: PLR2004 - a mix needs two classes
        msg = "both sides need predictions, over at least two classes"
        raise ValueError(msg)
    table = np.stack([pooled_live[seen], ref[seen]])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    deff = _design_effect(per_device[:, seen], ref[seen]) if live_counts.ndim == 2 else 1.0  # noqa: PLR2004
    dof = int(seen.sum()) - 1
    return PredictionMixShift(
        statistic=statistic / deff, dof=dof, p_value=chi2_sf(statistic / deff, dof), design_effect=deff
    )
