"""Reference histograms: the drift baseline and the bin edges devices count telemetry on.

Edges are fixed at build time and signed, so a device and the server count into
the same bins for the bundle's whole life. Feature ``i`` of an input is its index
on axis 1: a column of a ``[N, F]`` tensor, or for ``[N, C, ...]`` tensors
channel ``i`` averaged over the remaining axes (global average pooling), so
every feature contributes one value per row and every histogram counts rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from modelfleet.bundle._inference import Array
from modelfleet.bundle._manifest import FeatureHistogram, Histogram, TensorSpec
from modelfleet.errors import BuildError

__all__ = ["MAX_FEATURES", "confidence_histogram", "feature_histograms", "feature_values"]

MAX_FEATURES = 4096  # one histogram each in the signed manifest; beyond this the manifest outgrows its limit


def feature_values(array: Array) -> npt.NDArray[np.float64]:
    """Return one value per (row, feature): ``[N]`` -> one feature, ``[N, F]`` as is, ``[N, C, ...]`` channel means."""
    rows = array.shape[0]
    if array.ndim == 1:
        return array.astype(np.float64).reshape(rows, 1)
    return np.asarray(array.reshape(rows, array.shape[1], -1).mean(axis=2, dtype=np.float64), dtype=np.float64)


def _feature_count(array: Array) -> int:
    return 1 if array.ndim == 1 else int(array.shape[1])


def feature_histograms(
    specs: Sequence[TensorSpec], inputs: Mapping[str, Array], bins: int
) -> tuple[FeatureHistogram, ...]:
    """Histogram every input feature on quantile edges of the validation data.

    Edges are ``[-inf, interior quantiles..., +inf]`` with ``bins`` bins; repeated
    quantiles (discrete features) are merged, so such features get fewer bins.

    Raises:
        BuildError: ``too_many_features`` above :data:`MAX_FEATURES`.
    """
    total = sum(_feature_count(inputs[spec.name]) for spec in specs)
    if total > MAX_FEATURES:
        msg = f"the inputs have {total} features (axis 1); reference histograms are limited to {MAX_FEATURES}"
        raise BuildError(msg, code="too_many_features")
    histograms: list[FeatureHistogram] = []
    for spec in specs:
        values = feature_values(inputs[spec.name])
        interiors = _interior_edges(values, bins)
        for index, interior in enumerate(interiors):
            edges, counts = _count(values[:, index], interior)
            histograms.append(FeatureHistogram(input=spec.name, index=index, edges=edges, counts=counts))
    return tuple(histograms)


def _interior_edges(values: npt.NDArray[np.float64], bins: int) -> list[npt.NDArray[np.float64]]:
    """Per feature, the sorted distinct quantiles that split the rows into ``bins`` parts."""
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    if levels.size == 0:
        return [np.empty(0) for _ in range(values.shape[1])]
    quantiles = np.quantile(values, levels, axis=0)  # [bins - 1, features]
    return [np.unique(quantiles[:, index]) for index in range(values.shape[1])]


def _count(
    column: npt.NDArray[np.float64], interior: npt.NDArray[np.float64]
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Counts of ``column`` in ``[edges[i], edges[i+1])`` for edges ``[-inf, *interior, inf]``."""
    index = np.searchsorted(interior, column, side="right")
    counts = np.bincount(index, minlength=interior.size + 1)
    edges = (-np.inf, *(float(edge) for edge in interior), np.inf)
    return edges, tuple(int(count) for count in counts)


def confidence_histogram(confidence: npt.NDArray[np.float64], bins: int) -> Histogram:
    """Histogram top-1 confidence on ``bins`` equal-width bins over [0, 1]; the last bin includes 1.0."""
    edges = tuple(index / bins for index in range(bins + 1))  # i / bins: the shortest decimals ("0.05")
    index = np.clip(np.searchsorted(np.asarray(edges), confidence, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    return Histogram(edges=edges, counts=tuple(int(count) for count in counts))
