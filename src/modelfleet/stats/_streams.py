"""Look-by-look confidence sequences and always-valid evidence for the experiment analyses.

Two device streams, both vectorized over leading axes (simulated runs) with one
look per device along the last axis:

- **two arms** (A/B, a variant against the control): the AIPW stream and
  variance floor of :mod:`modelfleet.stats._sequential`, unchanged;
- **one sample of paired differences** (shadow, time-slice): each device
  contributes dᵢ = its candidate value − its control value, measured on the
  same device, so the device's own level cancels. E[dᵢ] = Δ and devices are
  i.i.d., so the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha,
  Kennedy & Ramdas (2021) applies directly: d̄_t ± σ̂_t·u_α(t)/t, with σ̂_t the
  sample sd (n − 1) of d₁..d_t and u_α the same exact normal-mixture boundary
  (:mod:`modelfleet.stats._boundary`), tuned at the planned devices.

Both report evidence in each direction: E⁺_t and E⁻_t, the maxima over looks ≤ t
of log M⁺ and log M⁻, the one-sided normal mixtures for Δ > 0 and Δ < 0, each
tuned at the side's α; with E_t = max(E⁺_t, E⁻_t),
p_t = min(1, 2·exp(−E_t)) is an always-valid two-sided p-value (Ville's
inequality on each side, a union bound across the two), it never rises, and
p_t ≤ 2·α_side exactly when one of the α_side bounds excluded Δ = 0 at some look.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import BoolArray, FloatArray, as_flags, as_values, float_array
from modelfleet.stats._boundary import mixture_rho, one_sided_boundary, one_sided_log_mixture
from modelfleet.stats._sequential import _running_moments

__all__: list[str] = []


@dataclass(frozen=True, slots=True)
class StreamPath:
    """A difference's confidence sequence and evidence after every device (last axis = looks).

    Attributes:
        estimate: running estimate of Δ = treatment − control.
        lower: lower bound at the side's α (−inf before the burn-in).
        upper: upper bound at the side's α (+inf before the burn-in).
        evidence_up: running max of log M⁺, the evidence that Δ > 0 (−inf before the burn-in).
        evidence_down: running max of log M⁻, the evidence that Δ < 0.
        control_mean: running mean of the control values (for the relative lift).
        ready: whether the burn-in was reached at this look.
    """

    estimate: FloatArray
    lower: FloatArray
    upper: FloatArray
    evidence_up: FloatArray
    evidence_down: FloatArray
    control_mean: FloatArray
    ready: BoolArray

    def p_value(self) -> FloatArray:
        """Return the always-valid two-sided p-value at every look."""
        return float_array(np.minimum(1.0, 2.0 * np.exp(-np.maximum(self.evidence_up, self.evidence_down))))

    def sign(self) -> FloatArray:
        """Return +1 where the evidence says Δ > 0, −1 where it says Δ < 0 (the larger side), 0 on a tie."""
        with np.errstate(invalid="ignore"):
            return float_array(np.sign(np.nan_to_num(self.evidence_up - self.evidence_down, nan=0.0)))


def _evidence(
    mean: FloatArray, std: FloatArray, count: FloatArray, ready: BoolArray, rho: float
) -> tuple[FloatArray, FloatArray]:
    """Return the running maxima over looks of log M⁺ and log M⁻ for H0: Δ = 0."""
    centred = count * np.nan_to_num(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        sums = np.where(std > 0, centred / std, np.sign(centred) * np.inf)
    sums = np.nan_to_num(sums, nan=0.0, posinf=1e150, neginf=-1e150)
    up, down = (
        float_array(np.maximum.accumulate(np.where(ready, one_sided_log_mixture(s, count, rho), -np.inf), axis=-1))
        for s in (sums, -sums)
    )
    return up, down


def _path(
    mean: FloatArray,
    std: FloatArray,
    count: FloatArray,
    ready: BoolArray,
    control_mean: FloatArray,
    *,
    planned_devices: int,
    alpha_side: float,
) -> StreamPath:
    """Return the bounds and evidence of a running mean with sd ``std`` over ``count`` observations."""
    rho = mixture_rho(planned_devices, alpha_side)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = one_sided_boundary(count, alpha_side, rho) * std / np.maximum(count, 1.0)
    up, down = _evidence(mean, std, count, ready, rho)
    return StreamPath(
        estimate=mean,
        lower=float_array(np.where(ready, mean - half, -np.inf)),
        upper=float_array(np.where(ready, mean + half, np.inf)),
        evidence_up=up,
        evidence_down=down,
        control_mean=control_mean,
        ready=ready,
    )


def _not_ready(shape: tuple[int, ...], control_mean: FloatArray) -> StreamPath:
    """Return the path of a stream too short for any moment: no estimate, infinite bounds, no evidence."""
    return StreamPath(
        estimate=np.full(shape, np.nan),
        lower=np.full(shape, -np.inf),
        upper=np.full(shape, np.inf),
        evidence_up=np.full(shape, -np.inf),
        evidence_down=np.full(shape, -np.inf),
        control_mean=control_mean,
        ready=np.zeros(shape, dtype=np.bool_),
    )


def _running_mean(values: FloatArray, weights: FloatArray) -> FloatArray:
    """Return the running weighted mean along the last axis (NaN while no weight has arrived)."""
    total = np.cumsum(values * weights, axis=-1)
    count = np.cumsum(weights, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float_array(np.where(count > 0, total / np.maximum(count, 1.0), np.nan))


def two_arm_path(
    values: ArrayLike,
    treated: ArrayLike,
    *,
    treatment_probability: float,
    planned_devices: int,
    alpha_side: float,
    min_devices_per_arm: int,
) -> StreamPath:
    """Return the A/B path of treatment − control: the gate's AIPW stream, read in both directions."""
    y = as_values(values, "values")
    z = as_flags(treated, "treated")
    if y.shape[-1] < 2:  # noqa: PLR2004 - the first device only seeds the centering
        return _not_ready(y.shape, _running_mean(y, (~z).astype(np.float64)))
    moments = _running_moments(y, z, treatment_probability, min_devices_per_arm)
    return _path(
        moments.mean,
        moments.std,
        moments.count,
        moments.ready,
        _running_mean(y, (~z).astype(np.float64)),
        planned_devices=planned_devices,
        alpha_side=alpha_side,
    )


def paired_path(
    differences: ArrayLike,
    control: ArrayLike,
    *,
    planned_devices: int,
    alpha_side: float,
    min_devices: int,
) -> StreamPath:
    """Return the path of the mean within-device difference (candidate − control on the same device).

    Args:
        differences: one dᵢ per device, in the order devices completed, shape ``[..., n]``.
        control: each device's control value, same shape (only for the relative lift).
        planned_devices: devices the experiment plans; the boundary is tightest there.
        alpha_side: crossing probability of each bound.
        min_devices: devices needed before the bounds are finite.
    """
    d = as_values(differences, "differences")
    c = as_values(control, "control")
    if d.shape != c.shape:
        msg = f"differences {d.shape} and control {c.shape} differ in shape"
        raise ValueError(msg)
    if d.shape[-1] == 0:
        return _not_ready(d.shape, c)
    count = np.arange(1, d.shape[-1] + 1, dtype=np.float64)
    shifted = d - d.mean(axis=-1, keepdims=True) if d.shape[-1] else d
    mean_shifted = np.cumsum(shifted, axis=-1) / count
    sum_sq = np.maximum(np.cumsum(shifted * shifted, axis=-1) - count * mean_shifted**2, 0.0)
    std = np.sqrt(sum_sq / np.maximum(count - 1.0, 1.0))
    ready = np.broadcast_to(count >= max(min_devices, 2), d.shape)
    return _path(
        float_array(np.cumsum(d, axis=-1) / count),
        float_array(std),
        np.broadcast_to(count, d.shape),
        ready,
        _running_mean(c, np.ones_like(c)),
        planned_devices=planned_devices,
        alpha_side=alpha_side,
    )
