"""Multiple comparisons across gates: Holm, Benjamini–Hochberg, and α-splitting for confidence sequences.

Always-valid p-values (:func:`modelfleet.stats.always_valid_p_value`) are valid
p-values at any stopping time, so these procedures apply to them at whatever
look the reconciler stops (Johari et al. 2017, §5, for BH on always-valid
p-values). For confidence sequences the same guarantee comes from splitting α:
Bonferroni gives each of k gates α/k; the Holm-style split gives α/(k − r) once
r gates have already rejected, which is Holm's step-down read one rejection at a
time (valid because always-valid p-values only decrease, so a rejected gate
stays rejected).
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import BoolArray, FloatArray, as_values, check_probability

__all__ = ["AdjustedPValues", "benjamini_hochberg", "holm", "split_alpha"]


@dataclass(frozen=True, slots=True)
class AdjustedPValues:
    """Adjusted p-values and rejections, in the order the p-values were given.

    Attributes:
        adjusted: adjusted p-values (compare each with ``alpha``).
        reject: whether each hypothesis is rejected at ``alpha``.
        alpha: the family-wise error rate (Holm) or false discovery rate (BH) controlled.
    """

    adjusted: FloatArray
    reject: BoolArray
    alpha: float


def _p_values(p_values: ArrayLike) -> FloatArray:
    """Return a 1-D array of p-values in [0, 1]."""
    p = as_values(p_values, "p_values")
    if p.ndim != 1 or np.any((p < 0) | (p > 1)):
        msg = "p_values must be a 1-D array of numbers in [0, 1]"
        raise ValueError(msg)
    return p


def holm(p_values: ArrayLike, alpha: float = 0.01) -> AdjustedPValues:
    """Holm's step-down adjustment (Holm 1979, "A simple sequentially rejective multiple test procedure").

    With p₍₁₎ ≤ … ≤ p₍ₖ₎, the adjusted value of p₍ᵢ₎ is max_{j≤i} min(1, (k − j + 1)·p₍ⱼ₎);
    it controls the family-wise error rate under any dependence.
    """
    p = _p_values(p_values)
    k = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    adjusted = np.empty(k)
    adjusted[order] = stepped
    a = check_probability(alpha, "alpha")
    return AdjustedPValues(adjusted=adjusted, reject=adjusted <= a, alpha=a)


def benjamini_hochberg(p_values: ArrayLike, alpha: float = 0.05) -> AdjustedPValues:
    """Benjamini–Hochberg step-up adjustment (Benjamini & Hochberg 1995, JRSS B 57(1)).

    The adjusted value of p₍ᵢ₎ is min_{j≥i} min(1, k·p₍ⱼ₎/j); it controls the false
    discovery rate for independent or positively dependent p-values (PRDS).
    """
    p = _p_values(p_values)
    k = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * k / np.arange(1, k + 1)
    stepped = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    adjusted = np.empty(k)
    adjusted[order] = stepped
    a = check_probability(alpha, "alpha")
    return AdjustedPValues(adjusted=adjusted, reject=adjusted <= a, alpha=a)


def split_alpha(
    alpha: float, gates: int, *, rejected: int = 0, method: Literal["bonferroni", "holm"] = "bonferroni"
) -> float:
    """Return the α each gate's confidence sequence uses so that the family's error stays ≤ ``alpha``.

    Args:
        alpha: family-wise error rate for the whole set of gates.
        gates: number of gates tested together.
        rejected: gates already rejected (only used by ``"holm"``).
        method: ``"bonferroni"`` (α/k) or ``"holm"`` (α/(k − rejected)).
    """
    a = check_probability(alpha, "alpha")
    if gates < 1 or not 0 <= rejected < gates:
        msg = f"need gates ≥ 1 and 0 ≤ rejected < gates, got gates={gates}, rejected={rejected}"
        raise ValueError(msg)
    if method == "bonferroni":
        return a / gates
    if method == "holm":
        return a / (gates - rejected)
    msg = f"method must be 'bonferroni' or 'holm', got {method!r}"
    raise ValueError(msg)
