"""Array aliases and the input checks every ``stats`` function shares.

Bad arguments are the caller's mistake, so they raise ``ValueError`` (see the
error policy in :mod:`modelfleet.errors`); nothing here touches I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BoolArray",
    "FloatArray",
    "IntArray",
    "as_counts",
    "as_flags",
    "as_values",
    "check_alpha",
    "check_probability",
    "float_array",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]


def as_values(values: ArrayLike, name: str, *, min_ndim: int = 1) -> FloatArray:
    """Return ``values`` as finite float64, at least ``min_ndim`` dimensions."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < min_ndim:
        msg = f"{name} needs at least {min_ndim} dimension(s), got shape {array.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(array)):
        msg = f"{name} holds a NaN or infinite value"
        raise ValueError(msg)
    return array


def as_counts(counts: ArrayLike, name: str, *, min_ndim: int = 1) -> FloatArray:
    """Return non-negative counts (histogram bins, category tallies) as float64."""
    array = as_values(counts, name, min_ndim=min_ndim)
    if np.any(array < 0):
        msg = f"{name} holds a negative count"
        raise ValueError(msg)
    return array


def as_flags(flags: ArrayLike, name: str) -> BoolArray:
    """Return an array of 0/1 or boolean assignment flags as ``bool``."""
    array = np.asarray(flags)
    if array.dtype != np.bool_ and not np.all(np.isin(array, (0, 1))):
        msg = f"{name} must hold booleans or 0/1"
        raise ValueError(msg)
    return array.astype(np.bool_)


def check_probability(value: float, name: str) -> float:
    """Return ``value`` if it lies strictly between 0 and 1."""
    if not 0.0 < value < 1.0:
        msg = f"{name} must lie strictly between 0 and 1, got {value!r}"
        raise ValueError(msg)
    return float(value)


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return a significance level; it must lie in (0, 0.5) for one-sided boundaries."""
    if not 0.0 < alpha < 0.5:  # noqa: PLR2004 - a one-sided level at or above 1/2 is meaningless
        msg = f"{name} must lie strictly between 0 and 0.5, got {alpha!r}"
        raise ValueError(msg)
    return float(alpha)


def float_array(values: object) -> FloatArray:
    """Return ``values`` as a float64 array (gives NumPy reductions a precise type)."""
    return np.asarray(values, dtype=np.float64)
