"""Input features as the bundle builder defines them, so live counts land in the reference bins.

Feature ``i`` of an input is its index on axis 1: a ``[N]`` tensor is one
feature, a ``[N, F]`` tensor has ``F`` columns, and a ``[N, C, ...]`` tensor has
``C`` channels averaged over the remaining axes (global average pooling). This
must stay value-for-value identical to ``modelfleet.bundle._reference``; a test
holds the two side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["feature_values"]

_TABLE_RANK = 2


def feature_values(inputs: Mapping[str, npt.NDArray[Any]], input_order: Sequence[str]) -> npt.NDArray[np.float64]:
    """Return ``[rows, F]`` float64 features of ``inputs``, input by input in ``input_order``.

    Raises:
        ValueError: no inputs, an input has no batch axis, or the inputs disagree on the number of rows.
    """
    if not input_order:
        msg = "feature_values needs at least one input"
        raise ValueError(msg)
    parts = [_one_input(name, inputs[name]) for name in input_order]
    if len({part.shape[0] for part in parts}) > 1:
        rows = {name: part.shape[0] for name, part in zip(input_order, parts, strict=True)}
        msg = f"inputs disagree on the number of rows: {rows}"
        raise ValueError(msg)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _one_input(name: str, array: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """One value per (row, feature) of one input tensor."""
    if array.ndim == 0:
        msg = f"input {name!r} is a scalar; features need a batch axis"
        raise ValueError(msg)
    rows = array.shape[0]
    if array.ndim == 1:
        return array.astype(np.float64).reshape(rows, 1)
    if array.ndim == _TABLE_RANK:
        # The builder averages each column over one element; in float64 that mean is the value itself.
        return array.astype(np.float64)
    return np.asarray(array.reshape(rows, array.shape[1], -1).mean(axis=2, dtype=np.float64), dtype=np.float64)
