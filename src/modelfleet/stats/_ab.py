"""A/B experiments with n variants: device-level lifts against the control, always valid, with an SRM stop.

Devices are assigned to arms by sticky hashing with planned shares (control
first). Each device contributes one value per metric once its exposure window
is complete, in the order devices completed. Each variant is compared with
the control on the devices of those two arms, in arrival order, by the gate's
AIPW confidence sequence (:mod:`modelfleet.stats._sequential`) with design
probability p = share(variant) / (share(variant) + share(control)); the
family metrics × variants is corrected by Holm or BH
(:mod:`modelfleet.stats._experiments`).

**Sample-ratio mismatch.** Before any lift is read, the devices per arm are
checked against the planned shares with the anytime-valid Dirichlet–multinomial
p-value of Lindon & Malek (2022), min over every look (each arriving device).
Below ``srm_threshold`` (0.001) the experiment is ``stopped``: devices of some
arm are missing (they fail to report, crash, or the assignment is not the
planned one), and a comparison of the devices that did report is biased in an
unknown direction, so no winner may be declared from it.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, IntArray, as_counts, as_values, check_probability, float_array
from modelfleet.stats._experiments import (
    Comparison,
    Correction,
    ExperimentAnalysis,
    ExperimentMetric,
    side_alpha,
    summarize,
)
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM
from modelfleet.stats._srm import SRM_THRESHOLD, _log_bayes_factor, sample_ratio_mismatch
from modelfleet.stats._streams import two_arm_path

__all__ = ["analyze_ab", "sequential_srm_path"]


def sequential_srm_path(arms: ArrayLike, shares: ArrayLike, *, concentration: float = 100.0) -> FloatArray:
    """Return the anytime-valid SRM p-value after every device (running min), vectorized over leading axes.

    Args:
        arms: arm index of each device in arrival order (0 = control), shape ``[..., n]``.
        shares: the planned split, one share per arm.
        concentration: the Dirichlet prior's weight (see :func:`modelfleet.stats.sequential_sample_ratio_p_value`).
    """
    pi = as_counts(shares, "shares")
    pi = pi / pi.sum()
    a = np.asarray(arms, dtype=np.int64)
    counts = np.cumsum(a[..., None] == np.arange(pi.size), axis=-2, dtype=np.float64)
    log_bf = np.maximum.accumulate(_log_bayes_factor(counts, pi, concentration), axis=-1)
    return float_array(np.minimum(1.0, np.exp(-log_bf)))


def _arms(variants: ArrayLike, arms: int) -> IntArray:
    """Return the arm of each device, checked against the number of planned arms."""
    a = np.asarray(variants)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or np.any((a < 0) | (a >= arms)):
        msg = f"variants must be a 1-D array of arm indices in 0..{arms - 1} (0 = control)"
        raise ValueError(msg)
    return a.astype(np.int64)


def _metric_values(values: Mapping[str, ArrayLike], metrics: Sequence[ExperimentMetric], n: int) -> list[FloatArray]:
    """Return each metric's device values, checked to be one per device."""
    if not metrics:
        msg = "an experiment needs at least one metric (the first is the primary)"
        raise ValueError(msg)
    out = []
    for metric in metrics:
        if metric.name not in values:
            msg = f"no values for metric {metric.name!r}"
            raise ValueError(msg)
        y = as_values(values[metric.name], metric.name)
        if y.shape != (n,):
            msg = f"metric {metric.name!r} has shape {y.shape}, expected one value per device ({n},)"
            raise ValueError(msg)
        metric.sign()
        out.append(y)
    return out


def analyze_ab(
    values: Mapping[str, ArrayLike],
    variants: ArrayLike,
    *,
    metrics: Sequence[ExperimentMetric],
    shares: Sequence[float],
    planned_devices: int,
    alpha: float = 0.05,
    correction: Correction = "holm",
    names: Sequence[str] | None = None,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
    srm_threshold: float = SRM_THRESHOLD,
) -> ExperimentAnalysis:
    """Analyse an A/B(/n) experiment on the devices that have reported so far.

    Args:
        values: metric name → one value per device (its mean over the exposure window), in arrival order.
        variants: each device's arm, 0 = control, 1.. = variants, same order.
        metrics: the metrics to compare; the first is primary, the others are guards.
        shares: the planned share of each arm, control first.
        planned_devices: devices (all arms) the experiment plans (from :func:`plan_experiment`).
        alpha: family-wise error (Holm) or false discovery rate (BH) over metrics × variants.
        correction: ``"holm"`` or ``"bh"``.
        names: arm names, control first (default ``control``, ``variant 1``, ...).
        min_devices_per_arm: devices each arm needs before an interval is finite.
        srm_threshold: the sequential SRM p-value below which the experiment stops.
    """
    share = as_counts(shares, "shares")
    if share.ndim != 1 or share.size < 2 or np.any(share <= 0):  # noqa: PLR2004 - control and one variant
        msg = "shares needs a positive share for the control and each variant"
        raise ValueError(msg)
    share = share / share.sum()
    arm_names = list(names) if names is not None else ["control"] + [f"variant {v}" for v in range(1, share.size)]
    if len(arm_names) != share.size:
        msg = f"{len(arm_names)} names for {share.size} arms"
        raise ValueError(msg)
    arms = _arms(variants, share.size)
    ys = _metric_values(values, metrics, arms.size)
    check_probability(alpha, "alpha")
    a_side = side_alpha(alpha, (share.size - 1) * len(metrics))
    comparisons = []
    for v in range(1, share.size):
        member = (arms == 0) | (arms == v)
        p = share[v] / (share[v] + share[0])
        planned = max(2, round(planned_devices * (share[v] + share[0])))
        for j, (metric, y) in enumerate(zip(metrics, ys, strict=True)):
            path = two_arm_path(
                y[member],
                arms[member] == v,
                treatment_probability=float(p),
                planned_devices=planned,
                alpha_side=a_side,
                min_devices_per_arm=min_devices_per_arm,
            )
            comparisons.append(Comparison(arm_names[v], metric, j == 0, path, int(member.sum())))
    counts = tuple(int(np.sum(arms == a)) for a in range(share.size))
    analysis = summarize("ab", comparisons, alpha=alpha, correction=correction, devices=counts)
    srm = sample_ratio_mismatch(counts, share, threshold=srm_threshold)
    sequential = float(sequential_srm_path(arms, share)[-1]) if arms.size else 1.0
    analysis = dataclasses.replace(analysis, sample_ratio=srm, sample_ratio_p_value=sequential)
    if sequential < srm_threshold:
        expected = ", ".join(f"{name} {e:.0f}" for name, e in zip(arm_names, srm.expected, strict=True))
        observed = ", ".join(f"{name} {c}" for name, c in zip(arm_names, counts, strict=True))
        reason = (
            f"sample-ratio mismatch: devices per arm {observed} against {expected} expected from the planned "
            f"split (anytime-valid p = {sequential:.2g} < {srm_threshold:g}). Devices of some arm are not "
            "reporting or assignment is broken; the lifts are not trustworthy and no winner is declared. "
            "Stop the experiment and check the arm with the fewest devices."
        )
        return dataclasses.replace(analysis, verdict="stopped", winner=None, reason=reason)
    return analysis
