"""Stage planning: how many devices, and how long, before a stage can catch a degradation of the margin.

The test is the sequential gate itself (:mod:`modelfleet.stats._sequential`),
not a fixed-horizon z-test, so the plan already pays for continuous monitoring.
With the ψ stream's standard deviation as the gate estimates it,

    σ_ψ² = max(σ₁²/p + σ₀²/(1 − p), (p·σ₁² + (1 − p)·σ₀²)/(p(1 − p)))      (p = canary share)

(the efficient AIPW variance, floored by the pooled within-arm variance as the
gate floors σ̂²; the two agree when σ₁ = σ₀, and the floor binds when the
larger arm is the more spread out one, e.g. a regressed error rate on 80 %
canaries, where planning on the efficient variance alone gave 89 % power for a
90 % plan), the rollback bound at the planned size n is ψ̄_n + σ_ψ·u_α(n)/n, and with ρ tuned
at n, u_α(n)/sqrt(n) = b_α does not depend on n
(:func:`modelfleet.stats._boundary.standardized_boundary_constant`; b_0.05 ≈ 2.77,
b_0.01 ≈ 3.35 against z = 1.64, 2.33 at one look). Under Δ = −margin,
ψ̄_n ≈ N(−margin, σ_ψ²/n), so P(rollback at look n) ≥ power when

    margin·sqrt(n)/σ_ψ ≥ z_power + b_α,   i.e.   n = ((z_power + b_α)·σ_ψ / margin)²

(the usual normal power equation with b_α in place of z_{1−α}; Jennison &
Turnbull 2000, ch. 2, for the fixed-sample analogue). It counts only the final
look, so earlier crossings make the real power somewhat higher: the plan is
conservative, and the tests check it by simulation. One device is added because
the first device only seeds the centering, and n is raised until each arm's
expected size is twice the burn-in.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from modelfleet.stats._arrays import check_alpha, check_probability
from modelfleet.stats._boundary import standardized_boundary_constant
from modelfleet.stats._scipy import ndtri
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM

__all__ = ["StagePlan", "minimum_detectable_effect", "plan_stage"]


@dataclass(frozen=True, slots=True)
class StagePlan:
    """How many compared devices a stage needs and how long they take to arrive.

    Attributes:
        devices_needed: compared devices (canary + holdout); pass as ``planned_devices`` to the gate.
        treatment_devices: expected canary devices among them.
        control_devices: expected holdout devices among them.
        duration: time for that many devices to complete exposure at the given arrival rate.
        feasible: whether the fleet and the time limit allow it.
        reason: why the plan is or is not feasible, in words.
        minimum_detectable_effect: smallest degradation detected with the requested power by the
            devices the stage can reach (``devices_needed`` when unbounded).
        stream_sd: σ_ψ, the per-device standard deviation of the sequential test's stream (with the gate's floor).
        margin: the degradation the plan is powered for.
        alpha: the rollback error rate.
        power: the requested power.
        holdout_fraction: share of compared devices kept on the current version.
    """

    devices_needed: int
    treatment_devices: int
    control_devices: int
    duration: timedelta
    feasible: bool
    reason: str
    minimum_detectable_effect: float
    stream_sd: float
    margin: float
    alpha: float
    power: float
    holdout_fraction: float


def _efficient_stream_sd(device_sd: float, control_sd: float | None, holdout_fraction: float) -> float:
    """Return sqrt(σ₁²/p + σ₀²/(1 − p)), the efficient AIPW stream sd (and a difference in means' sd × sqrt(n))."""
    sd0 = device_sd if control_sd is None else control_sd
    if device_sd <= 0 or sd0 <= 0:
        msg = "device standard deviations must be positive"
        raise ValueError(msg)
    p = 1.0 - holdout_fraction
    return math.sqrt(device_sd**2 / p + sd0**2 / holdout_fraction)


def _stream_sd(device_sd: float, control_sd: float | None, holdout_fraction: float) -> float:
    """Return σ_ψ as the gate estimates it: the efficient sd, or the pooled floor when that is larger."""
    sd0 = device_sd if control_sd is None else control_sd
    p, h = 1.0 - holdout_fraction, holdout_fraction
    floor = math.sqrt((p * device_sd**2 + h * sd0**2) / (p * h))
    return max(_efficient_stream_sd(device_sd, control_sd, holdout_fraction), floor)


def minimum_detectable_effect(devices: int, stream_sd: float, *, alpha: float, power: float) -> float:
    """Return the degradation the sequential gate catches with ``power`` by ``devices`` compared devices."""
    if devices < 2:  # noqa: PLR2004 - one device only seeds the centering
        return math.inf
    z = ndtri(check_probability(power, "power")) + standardized_boundary_constant(check_alpha(alpha))
    return z * stream_sd / math.sqrt(devices - 1)


def plan_stage(
    *,
    margin: float,
    device_sd: float,
    holdout_fraction: float,
    arrival_rate_per_hour: float,
    alpha: float = 0.01,
    power: float = 0.9,
    control_sd: float | None = None,
    available_devices: int | None = None,
    max_duration: timedelta | None = None,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> StagePlan:
    """Plan a canary stage so that a true degradation of ``margin`` rolls back with probability ≥ ``power``.

    Args:
        margin: the degradation to catch, in the metric's units (> 0).
        device_sd: sd of one canary device's value (from fleet data or the bundle's validation data).
        holdout_fraction: share of compared devices that are holdout, in (0, 1).
        arrival_rate_per_hour: compared devices completing their exposure per hour.
        alpha: P(rollback | Δ = 0) of the gate.
        power: required P(rollback by the planned size | Δ = −margin).
        control_sd: sd of a holdout device's value, if it differs from ``device_sd``.
        available_devices: compared devices the stage can reach at most (canary + holdout).
        max_duration: longest the stage may run.
        min_devices_per_arm: the gate's burn-in.
    """
    if not 0.0 < margin < math.inf or arrival_rate_per_hour <= 0:
        msg = "margin and arrival_rate_per_hour must be positive and finite"
        raise ValueError(msg)
    h = check_probability(holdout_fraction, "holdout_fraction")
    sd = _stream_sd(device_sd, control_sd, h)
    z = ndtri(check_probability(power, "power")) + standardized_boundary_constant(check_alpha(alpha))
    burn_in = math.ceil(2 * min_devices_per_arm / min(h, 1.0 - h))
    by_power = math.ceil((z * sd / margin) ** 2) + 1
    needed = max(by_power, burn_in)
    duration = timedelta(hours=needed / arrival_rate_per_hour)
    reachable = needed if available_devices is None else min(needed, available_devices)
    feasible, reason = True, f"{needed} compared devices over {duration} catch a degradation of {margin:g}"
    if available_devices is not None and needed > available_devices:
        mde = minimum_detectable_effect(available_devices, sd, alpha=alpha, power=power)
        feasible = False
        reason = (
            f"needs {needed} compared devices but the stage reaches only {available_devices}; "
            f"with them it can catch a degradation of {mde:.4g}, not {margin:g}"
        )
        if burn_in >= by_power:
            reason = (
                f"needs {needed} compared devices but the stage reaches only {available_devices}: each arm needs "
                f"{min_devices_per_arm} devices before the gate decides, and the smaller arm is {min(h, 1.0 - h):.0%}"
            )
    elif max_duration is not None and duration > max_duration:
        feasible = False
        reason = f"needs {duration} at {arrival_rate_per_hour:g} devices/hour, longer than the limit {max_duration}"
    return StagePlan(
        devices_needed=needed,
        treatment_devices=round(needed * (1.0 - h)),
        control_devices=round(needed * h),
        duration=duration,
        feasible=feasible,
        reason=reason,
        minimum_detectable_effect=minimum_detectable_effect(reachable, sd, alpha=alpha, power=power),
        stream_sd=sd,
        margin=float(margin),
        alpha=float(alpha),
        power=float(power),
        holdout_fraction=h,
    )
