"""Typed doors to the few SciPy functions ``stats`` uses.

SciPy ships no type information, so every call goes through this module: the
rest of the package stays strictly typed and SciPy is imported in one place.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats  # type: ignore[import-untyped]  # SciPy ships no stubs or py.typed

__all__ = [
    "beta_ppf",
    "chi2_sf",
    "gammaln",
    "log_ndtr",
    "ndtr",
    "ndtri",
    "rel_entr",
]


def log_ndtr(x: ArrayLike) -> NDArray[np.float64]:
    """Return log Φ(x), accurate far into the lower tail."""
    return np.asarray(special.log_ndtr(x), dtype=np.float64)


def ndtr(x: ArrayLike) -> NDArray[np.float64]:
    """Return the standard normal CDF Φ(x)."""
    return np.asarray(special.ndtr(x), dtype=np.float64)


def ndtri(p: float) -> float:
    """Return the standard normal quantile Φ⁻¹(p)."""
    return float(special.ndtri(p))


def chi2_sf(x: float, dof: int) -> float:
    """Return P(χ²_dof > x)."""
    return float(stats.chi2.sf(x, dof))


def beta_ppf(q: float, a: float, b: float) -> float:
    """Return the q-quantile of Beta(a, b) (used for Clopper–Pearson bounds)."""
    return float(stats.beta.ppf(q, a, b))


def gammaln(x: ArrayLike) -> NDArray[np.float64]:
    """Return log Γ(x) elementwise."""
    return np.asarray(special.gammaln(x), dtype=np.float64)


def rel_entr(p: ArrayLike, q: ArrayLike) -> NDArray[np.float64]:
    """Return p·log(p/q) elementwise with 0·log 0 = 0 (natural log)."""
    return np.asarray(special.rel_entr(p, q), dtype=np.float64)
