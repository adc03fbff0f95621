"""Sample-ratio mismatch: do the arms hold the device counts the assignment promised?

A mismatch means assignment or telemetry is broken (devices dropping out of one
arm, a cohort hash that is not uniform), and every comparison built on it is
suspect. The fixed check is Pearson's χ² goodness of fit of the observed device
counts against the planned split, flagged at p < 0.001 — the threshold GrowthBook
and Eppo use, strict because the check runs on every look. The sequential check
is the Dirichlet–multinomial mixture likelihood ratio of Lindon & Malek (2022),
"Anytime-valid inference for multinomial count data" (NeurIPS): its reciprocal is
a p-value valid at any look.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, as_counts, check_probability, float_array
from modelfleet.stats._scipy import chi2_sf, gammaln

__all__ = [
    "SRM_THRESHOLD",
    "SampleRatioCheck",
    "sample_ratio_mismatch",
    "sequential_sample_ratio_p_value",
]

SRM_THRESHOLD = 0.001
"""p-value below which a sample-ratio mismatch is flagged."""


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    """The χ² sample-ratio check of one experiment or stage.

    Attributes:
        statistic: Pearson's χ² = Σ (observed − expected)² / expected.
        p_value: P(χ²_{k−1} ≥ statistic).
        mismatch: ``p_value < threshold``.
        observed: devices per arm.
        expected: devices per arm under the planned split.
        threshold: the flagging threshold used.
    """

    statistic: float
    p_value: float
    mismatch: bool
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    threshold: float


def _counts_and_shares(observed: ArrayLike, planned_shares: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Return validated per-arm counts and planned shares normalized to sum to 1."""
    counts = as_counts(observed, "observed")
    shares = as_counts(planned_shares, "planned_shares")
    if counts.ndim != 1 or counts.shape != shares.shape or counts.size < 2:  # noqa: PLR2004 - two arms at least
        msg = "observed and planned_shares must be 1-D, of equal length, with at least two arms"
        raise ValueError(msg)
    if np.any(shares <= 0):
        msg = "every planned share must be positive"
        raise ValueError(msg)
    return counts, shares / shares.sum()


def sample_ratio_mismatch(
    observed: ArrayLike, planned_shares: ArrayLike, *, threshold: float = SRM_THRESHOLD
) -> SampleRatioCheck:
    """Test observed devices per arm against the planned split by Pearson's χ² (k − 1 degrees of freedom)."""
    counts, shares = _counts_and_shares(observed, planned_shares)
    expected = shares * counts.sum()
    if counts.sum() == 0:
        statistic, p_value = 0.0, 1.0
    else:
        statistic = float(np.sum((counts - expected) ** 2 / expected))
        p_value = chi2_sf(statistic, counts.size - 1)
    t = check_probability(threshold, "threshold")
    return SampleRatioCheck(
        statistic=statistic,
        p_value=p_value,
        mismatch=p_value < t,
        observed=tuple(int(c) for c in counts),
        expected=tuple(float(e) for e in expected),
        threshold=t,
    )


def sequential_sample_ratio_p_value(
    observed: ArrayLike, planned_shares: ArrayLike, *, concentration: float = 100.0
) -> float:
    """Return the anytime-valid SRM p-value min(1, 1/BF) at the current counts (Lindon & Malek 2022).

    BF = [Γ(A) / Γ(A + n)] · Πⱼ Γ(aⱼ + xⱼ)/Γ(aⱼ) / Πⱼ πⱼ^{xⱼ}, with aⱼ = A·πⱼ the Dirichlet
    prior centred on the planned shares π. BF is a nonnegative martingale under the
    planned split, so P(∃n: 1/BF_n ≤ a) ≤ a; keep the running minimum across looks
    for a monotone p-value.

    Args:
        observed: devices per arm so far.
        planned_shares: the planned split.
        concentration: A, the prior's total weight; larger values look for smaller imbalances.
    """
    counts, shares = _counts_and_shares(observed, planned_shares)
    return float(min(1.0, np.exp(-float(_log_bayes_factor(counts, shares, concentration)[()]))))


def _log_bayes_factor(counts: ArrayLike, shares: ArrayLike, concentration: float) -> FloatArray:
    """Return log BF of the Dirichlet–multinomial mixture against the planned split, over counts ``[..., k]``.

    ``shares`` must already sum to one; :func:`sequential_sample_ratio_p_value` checks its inputs.
    """
    if concentration <= 0:
        msg = "concentration must be positive"
        raise ValueError(msg)
    x = np.asarray(counts, dtype=np.float64)
    pi = np.asarray(shares, dtype=np.float64)
    prior = concentration * pi
    return float_array(
        gammaln(concentration)
        - gammaln(concentration + x.sum(axis=-1))
        + np.sum(gammaln(prior + x) - gammaln(prior), axis=-1)
        - np.sum(x * np.log(pi), axis=-1)
    )
