"""Experiment planning: devices × duration an A/B, shadow or time-slice experiment needs for an effect.

The test planned for is the analysis itself: a two-sided always-valid
confidence sequence, each side at α/(2M) for a family of M comparisons (the
Bonferroni level; Holm only rejects more), read at the planned size. With σ
the standard deviation of one observation of the stream and b = u(n)/√n the
standardized boundary constant at that side level (independent of n when the
mixture is tuned at n; :func:`modelfleet.stats._boundary.standardized_boundary_constant`),
an effect Δ is declared with probability ≥ power at the planned look when

    n = ((z_power + b)·σ / Δ)²

(the normal power equation with b in place of z_{1−α/2}; it counts only the
final look, so the plan is conservative — the tests check it by simulation).
σ per kind, from what the fleet (or the bundle's validation data) shows:

- ``ab``: σ² = σ_dev²/p + σ_dev²/(1 − p), σ_dev the sd of one device's value
  over its exposure (device-to-device spread *and* measurement noise), p the
  variant's share of the variant + control devices; n counts those two arms,
  and the experiment enrols n / (share(variant) + share(control)) devices;
- ``shadow``: σ = sd of a device's paired difference; from the within-device
  sd σ_w (how much one device's value moves between two exposures of the same
  length) it is σ_w·√(2(1 − r)) with r the correlation of the two models'
  errors on the same inputs (0 is the conservative default), plus the spread
  of the effect across devices;
- ``time_slice``: each version sees half the exposure, so σ = 2·σ_w (plus the
  effect's spread).

The paired kinds never see σ_dev: that is why they need far fewer devices on a
fleet whose devices differ a lot. Duration = the per-device exposure (for a
time-slice, the whole schedule) + the time to enrol the devices. A plan is
refused (``feasible`` false, with the reason and the effect it *can* detect)
when the fleet holds fewer devices than needed or the duration exceeds the limit.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import check_probability
from modelfleet.stats._boundary import standardized_boundary_constant
from modelfleet.stats._experiments import ExperimentKind, side_alpha
from modelfleet.stats._scipy import ndtri
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM

__all__ = ["ExperimentPlan", "FleetVariance", "fleet_variance", "paired_difference_sd", "plan_experiment"]


@dataclass(frozen=True, slots=True)
class ExperimentPlan:
    """Devices and time an experiment needs, or why it cannot have them.

    Attributes:
        kind: ``"ab"``, ``"shadow"`` or ``"time_slice"``.
        devices_needed: devices to enrol (all arms for A/B); pass as ``planned_devices`` to the analysis.
        devices_per_arm: expected devices per arm, control first (A/B), or ``(devices_needed,)``.
        duration: exposure + enrolment time.
        feasible: whether the fleet and the time limit allow it.
        reason: why the plan is or is not feasible, in words.
        minimum_detectable_effect: the effect detected with ``power`` by the devices reachable.
        stream_sd: σ of one observation of the analysis' stream.
        effect: the effect the plan is powered for.
        alpha: the family's level.
        power: the requested power.
        comparisons: M, the size of the family (metrics × variants).
    """

    kind: ExperimentKind
    devices_needed: int
    devices_per_arm: tuple[int, ...]
    duration: timedelta
    feasible: bool
    reason: str
    minimum_detectable_effect: float
    stream_sd: float
    effect: float
    alpha: float
    power: float
    comparisons: int


@dataclass(frozen=True, slots=True)
class FleetVariance:
    """The two standard deviations a plan needs, read from the fleet (or the bundle's validation data).

    Attributes:
        device_sd: sd of one device's value over a whole exposure (device-to-device spread and noise): A/B.
        within_sd: sd of one device's value around its own level over a whole exposure: shadow, time-slice.
        devices: devices the estimate rests on.
    """

    device_sd: float
    within_sd: float
    devices: int


def fleet_variance(values: ArrayLike) -> FleetVariance:
    """Estimate :class:`FleetVariance` from a metric per device and window, shape ``[devices, windows]``.

    The exposure is all the windows: a device's value is the mean of its windows
    (NaN windows are left out). The within sd is the pooled window-to-window sd
    of a device divided by √(windows per device); a drift across the windows
    inflates it, which only makes a plan larger.
    """
    y = np.asarray(values, dtype=np.float64)
    seen = np.isfinite(y)
    counts = seen.sum(axis=-1)
    if y.ndim != 2 or np.sum(counts >= 2) < 2:  # noqa: PLR2004 - two devices with two windows each
        msg = "need values [devices, windows] with at least two devices of two windows each"
        raise ValueError(msg)
    keep = counts >= 2  # noqa: PLR2004 - a within-device variance needs two windows
    y, seen, counts = y[keep], seen[keep], counts[keep]
    means = np.where(seen, y, 0.0).sum(axis=-1) / counts
    squares = np.where(seen, (y - means[:, None]) ** 2, 0.0).sum()
    window_var = float(squares / float(np.sum(counts - 1)))
    return FleetVariance(
        device_sd=float(np.std(means, ddof=1)),
        within_sd=math.sqrt(window_var * float(np.mean(1.0 / counts))),
        devices=int(keep.sum()),
    )


def paired_difference_sd(
    kind: ExperimentKind, within_sd: float, *, pair_correlation: float = 0.0, effect_sd: float = 0.0
) -> float:
    """Return the sd of one device's within-device difference for a shadow or time-slice experiment.

    Args:
        kind: ``"shadow"`` (both models see the full exposure) or ``"time_slice"`` (half each).
        within_sd: sd of one device's value between two exposures of the planned length.
        pair_correlation: correlation of the two models' errors on the same inputs (shadow only).
        effect_sd: spread of the true effect from device to device.
    """
    if within_sd < 0 or effect_sd < 0 or not -1.0 <= pair_correlation < 1.0:
        msg = "within_sd and effect_sd must be non-negative and pair_correlation in [-1, 1)"
        raise ValueError(msg)
    if kind == "shadow":
        noise = within_sd**2 * 2.0 * (1.0 - pair_correlation)
    elif kind == "time_slice":
        noise = 4.0 * within_sd**2
    else:
        msg = f"paired kinds are 'shadow' and 'time_slice', got {kind!r}"
        raise ValueError(msg)
    return math.sqrt(noise + effect_sd**2)


def _shares(kind: ExperimentKind, shares: Sequence[float]) -> tuple[float, ...]:
    """Return normalized arm shares (A/B) or a single share of 1 (paired kinds)."""
    if kind != "ab":
        return (1.0,)
    if len(shares) < 2 or any(s <= 0 for s in shares):  # noqa: PLR2004 - control and one variant
        msg = "an A/B plan needs a positive share for the control and each variant"
        raise ValueError(msg)
    total = float(sum(shares))
    return tuple(s / total for s in shares)


def _devices(kind: ExperimentKind, sd: float, z: float, effect: float, *, shares: tuple[float, ...], burn: int) -> int:
    """Return devices to enrol so that every comparison reaches its n (and every arm its burn-in)."""
    if kind != "ab":
        return max(math.ceil((z * sd / effect) ** 2), 2 * burn)
    needed = 0
    for share in shares[1:]:
        pair = share + shares[0]
        p = share / pair
        stream = sd * math.sqrt(1.0 / p + 1.0 / (1.0 - p))
        n = max(math.ceil((z * stream / effect) ** 2) + 1, math.ceil(2 * burn / min(p, 1.0 - p)))
        needed = max(needed, math.ceil(n / pair))
    return needed


def _detectable(kind: ExperimentKind, sd: float, z: float, devices: int, shares: tuple[float, ...]) -> float:
    """Return the effect ``devices`` enrolled devices detect with the plan's power (worst comparison)."""
    if kind != "ab":
        return z * sd / math.sqrt(devices) if devices > 0 else math.inf
    worst = 0.0
    for share in shares[1:]:
        pair = share + shares[0]
        p = share / pair
        n = devices * pair - 1.0
        stream = sd * math.sqrt(1.0 / p + 1.0 / (1.0 - p))
        worst = max(worst, z * stream / math.sqrt(n) if n > 0 else math.inf)
    return worst


def _stream_sd(kind: ExperimentKind, device_sd: float | None, difference_sd: float | None) -> float:
    """Return the sd the plan uses for the kind, refusing a missing or non-positive one."""
    sd = device_sd if kind == "ab" else difference_sd
    if kind not in {"ab", "shadow", "time_slice"}:
        msg = f"kind must be 'ab', 'shadow' or 'time_slice', got {kind!r}"
        raise ValueError(msg)
    if sd is None or not 0.0 < sd < math.inf:
        needs = "device_sd" if kind == "ab" else "difference_sd (see paired_difference_sd)"
        msg = f"a {kind} plan needs a positive {needs}"
        raise ValueError(msg)
    return float(sd)


def plan_experiment(
    kind: ExperimentKind,
    *,
    effect: float,
    exposure: timedelta,
    device_sd: float | None = None,
    difference_sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    shares: Sequence[float] = (0.5, 0.5),
    metrics: int = 1,
    devices_per_hour: float = math.inf,
    available_devices: int | None = None,
    max_duration: timedelta | None = None,
    min_devices: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> ExperimentPlan:
    """Plan an experiment so that a true effect of ``effect`` on the primary metric is declared with ``power``.

    Args:
        kind: ``"ab"``, ``"shadow"`` or ``"time_slice"``.
        effect: the minimum detectable effect, in the metric's units (> 0).
        exposure: the time one device needs to produce its value (for a time-slice, its whole schedule).
        device_sd: sd of one device's value over its exposure, as the fleet shows it (A/B).
        difference_sd: sd of one device's within-device difference (shadow, time-slice);
            :func:`paired_difference_sd` derives it from the within-device sd.
        alpha: the family's level (Holm or BH across metrics × variants).
        power: required probability of declaring the effect.
        shares: planned arm shares, control first (A/B).
        metrics: metrics in the family (primary and guards).
        devices_per_hour: devices that can start per hour (``inf``: all at once).
        available_devices: devices the target selector reaches.
        max_duration: longest the experiment may run.
        min_devices: the analysis' burn-in (per arm for A/B).
    """
    sd = _stream_sd(kind, device_sd, difference_sd)
    if not 0.0 < effect < math.inf or devices_per_hour <= 0 or metrics < 1:
        msg = "effect and devices_per_hour must be positive and metrics at least 1"
        raise ValueError(msg)
    arms = _shares(kind, shares)
    comparisons = metrics * max(len(arms) - 1, 1)
    a_side = side_alpha(alpha, comparisons)
    z = ndtri(check_probability(power, "power")) + standardized_boundary_constant(a_side)
    needed = _devices(kind, sd, z, effect, shares=arms, burn=min_devices)
    duration = exposure + timedelta(hours=needed / devices_per_hour)
    reachable = needed if available_devices is None else min(needed, available_devices)
    feasible, reason = True, f"{needed} devices over {duration} detect an effect of {effect:g} with power {power:g}"
    if available_devices is not None and needed > available_devices:
        mde = _detectable(kind, sd, z, available_devices, arms)
        feasible = False
        reason = (
            f"needs {needed} devices but the target reaches only {available_devices}; with them it detects "
            f"an effect of {mde:.4g} with power {power:g}, not {effect:g}"
        )
    elif max_duration is not None and duration > max_duration:
        feasible = False
        reason = f"needs {duration} (exposure {exposure} + enrolment), longer than the limit {max_duration}"
    return ExperimentPlan(
        kind=kind,
        devices_needed=needed,
        devices_per_arm=tuple(round(needed * s) for s in arms),
        duration=duration,
        feasible=feasible,
        reason=reason,
        minimum_detectable_effect=_detectable(kind, sd, z, reachable, arms),
        stream_sd=sd,
        effect=float(effect),
        alpha=float(alpha),
        power=float(power),
        comparisons=comparisons,
    )
