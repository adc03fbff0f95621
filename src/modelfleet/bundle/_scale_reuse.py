"""Keep a parent bundle's INT8 weight scales where the new weights fit them (delta-friendly releases).

Re-quantizing barely changed weights with a fresh scale moves many INT8 values by
one step (issue 8: a 1% larger scale changed 42% instead of 32% of them), so a
child built with ``--parent`` keeps the parent's scale and zero point for every
weight, or every channel of a per-channel weight, whose new values fit them:

- clipping: the scale the new values need at the parent's zero point to stay
  inside [-128, 127] is at most ``max_clip`` larger than the parent's (1%: the
  largest value is clipped by at most 1% of the range, about 1.3 steps);
- resolution: the parent's scale is at most ``max_coarsening`` larger than the
  one a fresh quantization would choose (5%: rounding noise grows by at most 5%).

Everything else (activation scales, INT32 biases derived from them) is calibrated
afresh. ONNX Runtime applies the kept scales through its ``TensorQuantOverrides``,
so quantized values, biases and graph are produced exactly as in a fresh build.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper
from onnxruntime.quantization.quant_utils import compute_data_quant_params

from modelfleet.bundle._manifest import QuantizedTensor
from modelfleet.bundle._parent import ParentBundle, QuantizedWeight, quantized_weights
from modelfleet.errors import BuildError

__all__ = ["ReuseBounds", "TensorOverrides", "mark_reused", "plan_reuse"]

logger = logging.getLogger(__name__)

TensorOverrides = dict[str, list[dict[str, object]]]
"""ONNX Runtime's ``TensorQuantOverrides``: per float initializer, one dict per tensor or per channel."""

_QMIN, _QMAX = -128, 127  # what QuantizeLinear clamps INT8 to, whatever scale it is given


@dataclass(frozen=True, slots=True)
class ReuseBounds:
    """How far new weights may stray from a parent's scale before it is replaced (see module docstring)."""

    max_clip: float = 0.01
    max_coarsening: float = 0.05


@dataclass(frozen=True, slots=True)
class _Fit:
    """One tensor's or channel's new range against the parent's scale and zero point."""

    growth: float  # scale needed at the parent's zero point / parent's scale - 1 (> 0: values clip)
    coarsening: float  # parent's scale / fresh scale - 1 (> 0: coarser steps than needed)

    def fits(self, bounds: ReuseBounds) -> bool:
        return self.growth <= bounds.max_clip and self.coarsening <= bounds.max_coarsening

    def why_not(self) -> str:
        if self.growth > self.coarsening:
            return f"range grew {self.growth:.2%} beyond the parent's"
        return f"range shrank: the parent's steps are {self.coarsening:.2%} coarser than needed"


def plan_reuse(source: Path, parent: ParentBundle, bounds: ReuseBounds) -> TensorOverrides:
    """Overrides that pin the parent's scale and zero point wherever the float weights in ``source`` fit them.

    Raises:
        BuildError: ``parent_layout`` when a weight's shape or channel layout differs from the parent's.
    """
    initializers = {tensor.name: tensor for tensor in onnx.load_model(source).graph.initializer}
    overrides: TensorOverrides = {}
    for name, old in parent.weights.items():
        if name not in initializers:
            continue  # the new model dropped it: nothing to reuse
        data = numpy_helper.to_array(initializers[name]).astype(np.float32)
        _check_layout(old, data, parent)
        override = _plan_weight(old, _channels(data, old.axis), bounds)
        if override is not None:
            overrides[name] = override
    return overrides


def _plan_weight(
    old: QuantizedWeight, channels: list[NDArray[np.float32]], bounds: ReuseBounds
) -> list[dict[str, object]] | None:
    """The override for one weight, ``None`` when no channel fits; says why each misfit gets a new scale."""
    pairs = zip(channels, old.scale, old.zero_point, strict=True)
    fits = [_fit(channel, float(scale), int(zero_point)) for channel, scale, zero_point in pairs]
    kept = [fit.fits(bounds) for fit in fits]
    for index, fit in enumerate(fits):
        if not kept[index]:
            where = old.name if old.axis is None else f"{old.name} channel {index}"
            logger.info("%s: new scale, %s", where, fit.why_not())
    return _override(old, channels, kept) if any(kept) else None


def mark_reused(tensors: tuple[QuantizedTensor, ...], model: Path, parent: ParentBundle) -> tuple[QuantizedTensor, ...]:
    """Record on each INT8 weight of ``model`` how many of its scale/zero-point pairs equal the parent's.

    Counted on the shipped graph, so the record holds even where ONNX Runtime moved a
    pinned scale (it may enlarge a weight scale that would overflow an INT32 bias).
    """
    weights = quantized_weights(model)
    before = {weight.name: weight for weight in parent.weights.values()}
    marked = []
    for tensor in tensors:
        if tensor.name in weights:
            reused = _same_pairs(weights[tensor.name], before.get(tensor.name))
            tensor = QuantizedTensor(**{**tensor.model_dump(), "reused": reused})  # noqa: PLW2901 - validated copy
        marked.append(tensor)
    return tuple(marked)


def _same_pairs(new: QuantizedWeight, old: QuantizedWeight | None) -> int:
    if old is None or old.scale.shape != new.scale.shape or old.axis != new.axis:
        return 0
    return int(np.count_nonzero((old.scale == new.scale) & (old.zero_point == new.zero_point)))


def _check_layout(old: QuantizedWeight, data: NDArray[np.float32], parent: ParentBundle) -> None:
    if tuple(data.shape) != old.shape:
        msg = (
            f"weight {old.float_name!r} is {list(data.shape)} here but {list(old.shape)} in parent "
            f"{parent.manifest.version} ({parent.path}); its scales cannot be reused"
        )
        raise BuildError(msg, code="parent_layout")


def _channels(data: NDArray[np.float32], axis: int | None) -> list[NDArray[np.float32]]:
    """The whole tensor, or one flat array per channel along ``axis``."""
    if axis is None:
        return [data.reshape(-1)]
    return [np.take(data, index, axis=axis).reshape(-1) for index in range(data.shape[axis])]


def _fit(values: NDArray[np.float32], scale: float, zero_point: int) -> _Fit:
    """Measure ``values`` against a scale and zero point (ONNX Runtime includes 0 in every range)."""
    high, low = float(values.max(initial=0.0)), float(values.min(initial=0.0))
    needed = max(_needed(high, _QMAX - zero_point), _needed(-low, zero_point - _QMIN))
    if needed == 0.0:
        return _Fit(growth=0.0, coarsening=0.0)  # all zeros: any scale represents them exactly
    if scale <= 0.0:
        return _Fit(growth=math.inf, coarsening=0.0)
    fresh = float(compute_data_quant_params(values, onnx.TensorProto.INT8, symmetric=zero_point == 0)[1])
    return _Fit(growth=needed / scale - 1.0, coarsening=scale / fresh - 1.0)


def _needed(extent: float, levels: int) -> float:
    """The scale that puts ``extent`` (>= 0) ``levels`` steps from the zero point; infinite without any step."""
    if extent == 0.0:
        return 0.0
    return extent / levels if levels > 0 else math.inf


def _override(old: QuantizedWeight, channels: list[NDArray[np.float32]], kept: list[bool]) -> list[dict[str, object]]:
    """The parent's pair where kept; elsewhere (per-channel only) the pair a fresh quantization would pick."""
    pairs: list[dict[str, object]] = []
    for channel, scale, zero_point, keep in zip(channels, old.scale, old.zero_point, kept, strict=True):
        if keep:
            pairs.append({"scale": float(scale), "zero_point": int(zero_point)})
        else:
            fresh_zero, fresh_scale = compute_data_quant_params(channel, onnx.TensorProto.INT8, symmetric=True)
            pairs.append({"scale": float(fresh_scale), "zero_point": int(fresh_zero)})
    if old.axis is not None:
        pairs[0]["axis"] = old.axis
    return pairs
