"""The parent of ``bundle build --parent OLD.mfb``: which model it is and the INT8 weights it shipped.

The parent is the builder's own previous release. It is read without checking its
signatures (the builder need not hold the keys that signed it) but its model is
checked against the sha256 its manifest declares: all it contributes are scales
and zero points, and the new model must pass the parity bound with them anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper
from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

from modelfleet.bundle._container import _next_member, _read_signed_part, _stream_member
from modelfleet.bundle._manifest import Manifest, parse_manifest
from modelfleet.config import BundleLimits
from modelfleet.errors import BuildError, BundleError

__all__ = ["ParentBundle", "QuantizedWeight", "load_parent", "quantized_weights"]

_EIGHT_BIT = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
_DEFAULT_AXIS = 1  # DequantizeLinear's axis when the attribute is absent


@dataclass(frozen=True, slots=True)
class QuantizedWeight:
    """An 8-bit weight initializer of a QDQ graph, with its scale(s), zero point(s) and channel axis."""

    name: str
    float_name: str
    shape: tuple[int, ...]
    scale: NDArray[np.float32]
    zero_point: NDArray[np.int64]
    axis: int | None

    @property
    def granularity(self) -> str:
        """``per-tensor``, or ``per-channel (axis A, N channels)``."""
        if self.axis is None:
            return "per-tensor"
        return f"per-channel (axis {self.axis}, {self.scale.size} channels)"


@dataclass(frozen=True, slots=True)
class ParentBundle:
    """The parent's manifest and its 8-bit weights, keyed by the float initializer they quantize."""

    path: Path
    manifest: Manifest
    weights: dict[str, QuantizedWeight]


def quantized_weights(path: Path) -> dict[str, QuantizedWeight]:
    """Every 8-bit initializer a ``DequantizeLinear`` node reads, by its ONNX Runtime name.

    ONNX Runtime names the INT8 copy of float initializer ``w`` ``w`` + ``TENSOR_NAME_QUANT_SUFFIX``;
    the float name is what its quantizer's overrides are keyed by.
    """
    graph = onnx.load_model(path).graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    found: dict[str, QuantizedWeight] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in constants or node.input[1] not in constants:
            continue
        weight = constants[node.input[0]]
        if weight.data_type in _EIGHT_BIT and weight.name.endswith(TENSOR_NAME_QUANT_SUFFIX):
            found[weight.name] = _weight(node, weight, constants)
    return found


def _weight(node: onnx.NodeProto, weight: onnx.TensorProto, constants: dict[str, onnx.TensorProto]) -> QuantizedWeight:
    shape = tuple(int(d) for d in weight.dims)
    scale = numpy_helper.to_array(constants[node.input[1]])
    zero_name = node.input[2] if len(node.input) > 2 else ""  # noqa: PLR2004 - the optional third input
    zero_point = numpy_helper.to_array(constants[zero_name]) if zero_name in constants else np.zeros(scale.shape)
    axis = next((int(a.i) for a in node.attribute if a.name == "axis"), _DEFAULT_AXIS) if scale.ndim else None
    return QuantizedWeight(
        name=weight.name,
        float_name=weight.name.removesuffix(TENSOR_NAME_QUANT_SUFFIX),
        shape=shape,
        scale=scale.astype(np.float32).reshape(-1),
        zero_point=zero_point.astype(np.int64).reshape(-1),
        axis=None if axis is None else axis % len(shape),
    )


def load_parent(path: Path, work: Path, limits: BundleLimits) -> ParentBundle:
    """Read the parent bundle's manifest and the 8-bit weights of its model.

    Raises:
        BuildError: ``bad_parent`` when the file cannot be read, is not a bundle,
            does not ship an ONNX model, or its model does not match its manifest's sha256.
    """
    model = work / "parent.onnx"
    with _as_bad_parent(path):
        manifest = _extract_model(path, model, limits)
    try:
        weights = quantized_weights(model) if manifest.contract.quantization.scheme == "int8" else {}
    except Exception as exc:  # noqa: BLE001 - onnx raises protobuf's DecodeError, which has no type stubs
        msg = f"parent bundle {path}: its model cannot be read as a quantized ONNX graph: {exc}"
        raise BuildError(msg, code="bad_parent") from None
    return ParentBundle(path, manifest, {weight.float_name: weight for weight in weights.values()})


@contextlib.contextmanager
def _as_bad_parent(path: Path) -> Iterator[None]:
    """Name the parent in whatever goes wrong while reading it."""
    try:
        yield
    except BundleError as exc:
        msg = f"parent bundle {path}: {exc.message}"
        raise BuildError(msg, code="bad_parent") from None
    except OSError as exc:
        msg = f"cannot read parent bundle {path}: {exc.strerror or exc}"
        raise BuildError(msg, code="bad_parent") from None


def _extract_model(path: Path, dest: Path, limits: BundleLimits) -> Manifest:
    """Copy the parent's model member to ``dest``, hash-checked; return the parent's manifest."""
    with path.open("rb") as stream:
        manifest = parse_manifest(_read_signed_part(stream, limits)[0])
        if manifest.model.format != "onnx":
            msg = f"parent bundle {path} ships a {manifest.model.format} model; only ONNX parents are supported"
            raise BuildError(msg, code="bad_parent")
        for entry in manifest.files:
            member = _next_member(stream)
            if member is None or member.name != entry.path or member.size != entry.size:
                msg = f"parent bundle {path}: member {entry.path!r} is missing or differs from its manifest"
                raise BuildError(msg, code="bad_parent")
            with dest.open("wb") if entry.path == manifest.model.file else contextlib.nullcontext() as sink:
                digest = _stream_member(stream, member.size, member.name, sink, limits.chunk_bytes)
            if digest != entry.sha256:
                msg = f"parent bundle {path}: {entry.path} does not match the sha256 in its manifest"
                raise BuildError(msg, code="bad_parent")
            if entry.path == manifest.model.file:
                return manifest
    msg = f"parent bundle {path} has no {manifest.model.file}"  # unreachable: the schema lists model.file in files
    raise BuildError(msg, code="bad_parent")
