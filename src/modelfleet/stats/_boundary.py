"""Normal-mixture uniform boundaries for a standardized sum (Howard et al. 2021).

For a process S_t with variance process V_t (here V_t = t after dividing by the
standard deviation), the one-sided normal mixture supermartingale with a
half-normal mixing density of precision 1/ρ over λ ≥ 0 is

    M_t(s) = 2·sqrt(ρ / (V_t + ρ)) · exp(s² / (2(V_t + ρ))) · Φ(s / sqrt(V_t + ρ))

(Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 49(2), the one-sided normal
mixture; the same expression as ``OneSidedNormalMixture`` in their ``confseq``
library).
Ville's inequality gives P(∃t: M_t(S_t) ≥ 1/α) ≤ α, so the boundary u_α(t) —
the root of M_t(s) = 1/α in s — is crossed with probability at most α at any
time, under any stopping rule. We solve for the root exactly (no closed-form
relaxation): writing x = s / sqrt(V+ρ), the root solves

    h(x) := x²/2 + log Φ(x) = c,   c = log( sqrt((V+ρ)/ρ) / (2α) ),

where h is increasing and convex (h'' is the variance of a truncated standard
normal), so Newton's method started to the right of the root decreases
monotonically onto it and every iterate is a valid, conservative boundary.

ρ sets where the boundary is tightest. For a planned sample size m, the
two-sided optimum ρ = m / (2 log(1/α) + log(1 + 2 log(1/α))) of Howard et al.
(2021), evaluated at 2α, is used for one side, as ``confseq`` does.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, check_alpha
from modelfleet.stats._scipy import log_ndtr

__all__ = [
    "mixture_rho",
    "one_sided_boundary",
    "one_sided_log_mixture",
    "standardized_boundary_constant",
    "two_sided_log_mixture",
]

_NEWTON_STEPS = 40
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def mixture_rho(planned_time: float, alpha: float) -> float:
    """Return the mixture parameter ρ that makes the one-sided boundary tightest near ``planned_time``.

    ``planned_time`` is in units of the variance process; for a standardized
    stream it is the planned number of observations.
    """
    if planned_time <= 0:
        msg = f"planned time must be positive, got {planned_time!r}"
        raise ValueError(msg)
    log_term = 2.0 * math.log(1.0 / (2.0 * check_alpha(alpha)))
    return planned_time / (log_term + math.log1p(log_term))


def _solve_h(c: FloatArray) -> FloatArray:
    """Return x with x²/2 + log Φ(x) = c for c > 0, by monotone Newton steps from the right."""
    x = np.sqrt(2.0 * (c + math.log(2.0)))  # h(x) ≥ x²/2 − log 2 for x ≥ 0, so this is right of the root
    for _ in range(_NEWTON_STEPS):
        log_cdf = log_ndtr(x)
        slope = x + np.exp(-0.5 * x * x - _LOG_SQRT_2PI - log_cdf)
        step = (0.5 * x * x + log_cdf - c) / slope
        x = x - step
        if float(np.max(np.abs(step), initial=0.0)) < 1e-13:  # noqa: PLR2004 - machine-precision stop
            break
    return x


def one_sided_boundary(times: ArrayLike, alpha: float, rho: float) -> FloatArray:
    """Return u_α(V) for each intrinsic time V: P(∃V: S_V ≥ u_α(V)) ≤ α for standard Brownian-like S.

    Args:
        times: intrinsic times V ≥ 0 (observation counts for a standardized stream).
        alpha: one-sided crossing probability.
        rho: mixture parameter from :func:`mixture_rho`.
    """
    v = np.asarray(times, dtype=np.float64)
    c = 0.5 * np.log((v + rho) / rho) - math.log(2.0 * check_alpha(alpha))
    return np.sqrt(v + rho) * _solve_h(c)


def standardized_boundary_constant(alpha: float) -> float:
    """Return u_α(m)/sqrt(m) when ρ is tuned at m; it does not depend on m.

    This is the number of standard errors a sequential estimate must clear at
    the planned sample size, the sequential analogue of z_{1-α}.
    """
    kappa = mixture_rho(1.0, alpha)
    return float(one_sided_boundary(np.array([1.0]), alpha, kappa)[0])


def one_sided_log_mixture(sums: ArrayLike, times: ArrayLike, rho: float) -> FloatArray:
    """Return log M_V(s) of the one-sided (λ ≥ 0) normal mixture for standardized sums s at times V."""
    s = np.asarray(sums, dtype=np.float64)
    scale = np.asarray(times, dtype=np.float64) + rho
    return math.log(2.0) + 0.5 * np.log(rho / scale) + s * s / (2.0 * scale) + log_ndtr(s / np.sqrt(scale))


def two_sided_log_mixture(sums: ArrayLike, times: ArrayLike, rho: float) -> FloatArray:
    """Return log M_V(s) of the two-sided normal mixture (Robbins 1970; Howard et al. 2021)."""
    s = np.asarray(sums, dtype=np.float64)
    scale = np.asarray(times, dtype=np.float64) + rho
    return 0.5 * np.log(rho / scale) + s * s / (2.0 * scale)
