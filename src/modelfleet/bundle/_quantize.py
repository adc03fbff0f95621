"""INT8 static quantization with ONNX Runtime (QDQ format) and the evidence it leaves.

The quantized graph's own scale and zero-point constants go into the manifest, and
the INT8 model must agree with its float original on the validation set, or the
build is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from modelfleet.bundle._inference import Array, batches, evenly_spaced
from modelfleet.bundle._manifest import Parity, Quantization, QuantizedTensor
from modelfleet.bundle._parent import ParentBundle
from modelfleet.bundle._scale_reuse import ReuseBounds, mark_reused, plan_reuse
from modelfleet.errors import BuildError, ParityError

__all__ = ["check_parity", "quantize_int8", "quantized_tensors"]

CALIBRATION_ROWS = 512  # min/max ranges settle long before this; more rows only cost time
_HELD_BATCHES = 4  # calibration outputs ORT keeps before folding them into ranges: bounds its memory
_DEFAULT_AXIS = 1  # DequantizeLinear's axis when the attribute is absent


class _CalibrationReader:
    """Feeds ONNX Runtime's calibrator (duck-typed ``CalibrationDataReader``) and reports progress."""

    def __init__(self, feeds: list[dict[str, Array]], progress: Callable[[int, int], None]) -> None:
        self._feeds = feeds
        self._next = 0
        self._progress = progress

    def get_next(self) -> dict[str, Array] | None:
        """Return the next calibration batch, or ``None`` when done."""
        if self._next == len(self._feeds):
            return None
        feed = self._feeds[self._next]
        self._next += 1
        self._progress(self._next, len(self._feeds))
        return feed


class _DropPreprocessHint(logging.Filter):
    """ONNX Runtime suggests its shape-inference pre-pass on every call; build deliberately skips it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_hint() -> Iterator[None]:
    hint = _DropPreprocessHint()
    root = logging.getLogger()  # ORT logs through the root logger
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize_int8(
    source: Path,
    dest: Path,
    inputs: Mapping[str, Array],
    *,
    per_channel: bool,
    rows: int,
    multiple: int,
    progress: Callable[[int, int], None],
    parent: ParentBundle | None = None,
    bounds: ReuseBounds | None = None,
) -> Quantization:
    """Quantize ``source`` to INT8 QDQ at ``dest``, calibrated on evenly spaced validation rows.

    Args:
        source: the float model.
        dest: where the INT8 model goes.
        inputs: validation inputs, by model input name.
        per_channel: one scale per output channel of each weight instead of one per tensor.
        rows: rows per calibration batch.
        multiple: the model's fixed batch size (1 if it has none).
        progress: told ``(batches done, batches)`` during calibration.
        parent: a previous release whose weight scales and zero points are kept where the new weights fit them.
        bounds: how well they must fit (default :class:`ReuseBounds`).

    Raises:
        BuildError: ``quantize_failed`` when ONNX Runtime cannot quantize the model;
            ``parent_layout`` when a weight's shape differs from the parent's.
    """
    overrides = plan_reuse(source, parent, bounds or ReuseBounds()) if parent is not None else {}
    indices = evenly_spaced(len(next(iter(inputs.values()))), CALIBRATION_ROWS, multiple)
    reader = _CalibrationReader(list(batches(inputs, rows, indices)), progress)
    try:
        with _without_preprocess_hint():
            quantize_static(
                str(source),
                str(dest),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibMaxIntermediateOutputs": _HELD_BATCHES, "TensorQuantOverrides": overrides},
            )
    except Exception as exc:  # noqa: BLE001 - the quantizer raises anything from ValueError to ORT's pybind errors
        msg = f"ONNX Runtime could not quantize the model to INT8: {type(exc).__name__}: {exc}"
        raise BuildError(msg, code="quantize_failed") from None
    tensors = quantized_tensors(dest)
    if parent is not None:
        tensors = mark_reused(tensors, dest, parent)
    return Quantization(scheme="int8", per_channel=per_channel, tensors=tensors)


def quantized_tensors(path: Path) -> tuple[QuantizedTensor, ...]:
    """List every tensor a ``DequantizeLinear`` node reads, with its constant scale(s) and zero point(s).

    A tensor is named as it is in the shipped graph: the INT8 initializer for a
    weight, the ``QuantizeLinear`` output for an activation.
    """
    graph = onnx.load_model(path).graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    found: dict[str, QuantizedTensor] = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[1] in constants:
            found.setdefault(node.input[0], _quantized_tensor(node, constants))
    return tuple(found[name] for name in sorted(found))


def _quantized_tensor(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto]) -> QuantizedTensor:
    scale = numpy_helper.to_array(constants[node.input[1]]).reshape(-1)
    zero_name = node.input[2] if len(node.input) > 2 else ""  # noqa: PLR2004 - the optional third input
    if zero_name in constants:
        zero_point = numpy_helper.to_array(constants[zero_name]).reshape(-1)
    else:
        zero_point = np.zeros(scale.shape, dtype=np.int64)  # ONNX: an omitted zero point is 0
    axis = next((int(a.i) for a in node.attribute if a.name == "axis"), _DEFAULT_AXIS) if scale.size > 1 else None
    return QuantizedTensor(
        name=node.input[0],
        scale=tuple(float(value) for value in scale),
        zero_point=tuple(int(value) for value in zero_point),
        axis=axis,
    )


def check_parity(float_top1: Array, int8_top1: Array, min_required: float) -> Parity:
    """Return the top-1 agreement of the two models as :class:`Parity`.

    Raises:
        ParityError: ``below_parity`` when the agreement is below ``min_required``.
    """
    agree = int((float_top1 == int8_top1).sum())
    rows = len(float_top1)
    agreement = agree / rows
    if agreement < min_required:
        msg = (
            f"the INT8 model agrees with the float model on {agree} of {rows} validation rows "
            f"({agreement:.4f}); at least {min_required:.4f} is required"
        )
        raise ParityError(msg, code="below_parity")
    return Parity(agreement=agreement, n=rows, min_required=min_required)
