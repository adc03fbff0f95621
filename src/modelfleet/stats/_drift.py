"""Drift distances between live and reference histograms on the same fixed edges, for many devices at once.

Devices report per-window counts on the bundle's own bin edges, so nothing is
re-binned: every distance takes counts ``[..., bins]`` (a reference of shape
``[bins]`` broadcasts against live ``[devices, bins]``) and returns one score per
leading index. A histogram with no counts has no distribution and scores NaN.

- PSI (population stability index; Yurdakul 2018, "Statistical properties of
  population stability index"): Σ (qᵢ − pᵢ)·ln(qᵢ/pᵢ), live q, reference p.
- KL: D(q‖p) = Σ qᵢ ln(qᵢ/pᵢ), live relative to reference, in nats.
- Jensen–Shannon distance (Endres & Schindelin 2003): sqrt of the JS divergence
  in bits, so it lies in [0, 1]; the form scipy, Evidently and NannyML report.
- Binned KS: max over bin edges of |Q(e) − P(e)|, the Kolmogorov–Smirnov
  statistic restricted to the edges the histograms can resolve.

PSI and KL are infinite when a bin is empty on one side, so both smooth each
proportion as (pᵢ + ε)/(1 + kε) (additive smoothing, k bins) before the log.
JS and KS need no smoothing.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import BoolArray, FloatArray, as_counts, float_array
from modelfleet.stats._scipy import rel_entr

__all__ = [
    "DEFAULT_SMOOTHING",
    "DriftShare",
    "binned_ks_distance",
    "drift_share_by_group",
    "jensen_shannon_distance",
    "kl_divergence",
    "persistent_drift",
    "population_stability_index",
]

DEFAULT_SMOOTHING = 1e-4
"""ε added to every proportion before PSI and KL (then renormalized)."""


def _proportions(reference: ArrayLike, live: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Return (reference, live) as proportions broadcast to one shape; empty histograms become NaN rows."""
    ref = as_counts(reference, "reference")
    cur = as_counts(live, "live")
    if ref.shape[-1] != cur.shape[-1]:
        msg = f"reference has {ref.shape[-1]} bins but live has {cur.shape[-1]}"
        raise ValueError(msg)
    ref, cur = np.broadcast_arrays(ref, cur)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = ref / ref.sum(axis=-1, keepdims=True)
        q = cur / cur.sum(axis=-1, keepdims=True)
    return p, q


def _smooth(p: FloatArray, epsilon: float) -> FloatArray:
    """Return (p + ε)/(1 + kε), k the number of bins."""
    if epsilon < 0:
        msg = f"epsilon must be non-negative, got {epsilon!r}"
        raise ValueError(msg)
    return float_array((p + epsilon) / (1.0 + p.shape[-1] * epsilon))


def population_stability_index(
    reference: ArrayLike, live: ArrayLike, *, epsilon: float = DEFAULT_SMOOTHING
) -> FloatArray:
    """Return PSI = Σ (qᵢ − pᵢ) ln(qᵢ/pᵢ) per histogram, after ε-smoothing both sides."""
    p, q = _proportions(reference, live)
    p, q = _smooth(p, epsilon), _smooth(q, epsilon)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float_array(np.sum((q - p) * np.log(q / p), axis=-1))


def kl_divergence(reference: ArrayLike, live: ArrayLike, *, epsilon: float = DEFAULT_SMOOTHING) -> FloatArray:
    """Return D(live‖reference) = Σ qᵢ ln(qᵢ/pᵢ) in nats, after ε-smoothing both sides."""
    p, q = _proportions(reference, live)
    return float_array(np.sum(rel_entr(_smooth(q, epsilon), _smooth(p, epsilon)), axis=-1))


def jensen_shannon_distance(reference: ArrayLike, live: ArrayLike) -> FloatArray:
    """Return sqrt(½D(p‖m) + ½D(q‖m)) with m = (p + q)/2 and base-2 logs; it lies in [0, 1]."""
    p, q = _proportions(reference, live)
    m = 0.5 * (p + q)
    divergence = 0.5 * np.sum(rel_entr(p, m) + rel_entr(q, m), axis=-1) / np.log(2.0)
    return float_array(np.sqrt(np.clip(divergence, 0.0, 1.0)))


def binned_ks_distance(reference: ArrayLike, live: ArrayLike) -> FloatArray:
    """Return max over bin edges of |CDF_live − CDF_reference|, in [0, 1]."""
    p, q = _proportions(reference, live)
    return float_array(np.max(np.abs(np.cumsum(q - p, axis=-1)), axis=-1))


def persistent_drift(scores: ArrayLike, threshold: float, windows: int) -> BoolArray:
    """Return, per device and window, whether the score has exceeded ``threshold`` for ``windows`` windows in a row.

    ``scores`` is ``[devices, windows]`` (oldest first); the result has the same
    shape and its last column says which devices are drifting now. A single
    noisy window never counts; a NaN (no data that window) breaks the run.

    Args:
        scores: drift scores per device and window.
        threshold: a window is "above" when its score is strictly greater.
        windows: K, consecutive windows above the threshold before a device counts as drifting.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim < 1 or windows < 1:
        msg = "scores need a window axis and windows must be at least 1"
        raise ValueError(msg)
    with np.errstate(invalid="ignore"):
        above = s > threshold
    index = np.arange(s.shape[-1])
    last_below = np.maximum.accumulate(np.where(above, -1, index), axis=-1)
    return (index - last_below) >= windows


@dataclass(frozen=True, slots=True)
class DriftShare:
    """How much of one group (cohort, tag, hardware revision) is drifting.

    Attributes:
        group: the group label.
        devices: devices in the group.
        drifting: devices in the group that are drifting.
        share: ``drifting / devices``.
    """

    group: str
    devices: int
    drifting: int
    share: float


def drift_share_by_group(drifting: ArrayLike, groups: ArrayLike) -> tuple[DriftShare, ...]:
    """Return the share of drifting devices per group label, sorted by label.

    Args:
        drifting: one boolean per device (e.g. the last column of :func:`persistent_drift`).
        groups: one label per device.
    """
    flags = np.asarray(drifting, dtype=np.bool_)
    labels = np.asarray(groups).astype(str)
    if flags.ndim != 1 or flags.shape != labels.shape:
        msg = "drifting and groups must be 1-D and of equal length"
        raise ValueError(msg)
    names, inverse = np.unique(labels, return_inverse=True)
    devices = np.bincount(inverse, minlength=names.size)
    hits = np.bincount(inverse, weights=flags.astype(np.float64), minlength=names.size)
    return tuple(
        DriftShare(group=str(name), devices=int(n), drifting=int(h), share=float(h / n))
        for name, n, h in zip(names, devices, hits, strict=True)
    )
