"""Read an ONNX model's tensor contract (inputs, outputs, opset) from the file itself.

The contract a bundle promises is the one the weights actually have, so it is
derived here rather than typed in by the builder.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx.external_data_helper import uses_external_data
from pydantic import ValidationError

from modelfleet.bundle._manifest import _SYMBOLIC_DIM, DType, TensorSpec
from modelfleet.errors import BuildError

__all__ = ["ModelGraph", "inspect_model", "numpy_dtype"]

_DTYPES: dict[int, DType] = {
    TensorProto.BOOL: "bool",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.FLOAT16: "float16",
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT8: "int8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.STRING: "string",
    TensorProto.UINT8: "uint8",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
}
# numpy has no bfloat16 and build does not histogram strings, so those cannot be fed.
_UNFEEDABLE: frozenset[DType] = frozenset({"bfloat16", "string"})
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True, slots=True)
class ModelGraph:
    """What the model file says about itself."""

    opset: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ir_version: int = 0
    ml_opset: int | None = None


def numpy_dtype(spec: TensorSpec) -> np.dtype[np.generic]:
    """Return the numpy dtype that feeds ``spec``.

    Raises:
        BuildError: the dtype cannot be fed from numpy (``bfloat16``, ``string``).
    """
    if spec.dtype in _UNFEEDABLE:
        msg = f"input {spec.describe()}: build cannot feed {spec.dtype} tensors from a validation set"
        raise BuildError(msg, code="unsupported_dtype")
    return np.dtype(spec.dtype)


def inspect_model(path: Path, shown_as: str | None = None) -> ModelGraph:
    """Read the contract of the ONNX model at ``path``.

    Args:
        path: the model file.
        shown_as: how messages name the model (the user's path when ``path`` is a staged copy).

    Raises:
        BuildError: ``bad_model`` (unreadable, not ONNX, no graph),
            ``external_data`` (weights outside the file), ``unsupported_tensor``.
    """
    shown = shown_as or str(path)
    model = _load(path, shown)
    initializers = {tensor.name for tensor in model.graph.initializer}
    # Old IR versions also list initializers as graph inputs; they are overridable weights, not inputs.
    inputs = tuple(_spec(value, "input") for value in model.graph.input if value.name not in initializers)
    outputs = tuple(_spec(value, "output") for value in model.graph.output)
    if not inputs or not outputs:
        msg = f"{shown}: the ONNX graph has no {'inputs' if not inputs else 'outputs'}"
        raise BuildError(msg, code="bad_model")
    return ModelGraph(
        opset=_opset(model, _DEFAULT_DOMAINS),
        inputs=inputs,
        outputs=outputs,
        ir_version=int(model.ir_version),
        ml_opset=_opset(model, ("ai.onnx.ml",)),
    )


def _parse(path: Path) -> onnx.ModelProto:
    """Parse from a memory map: ``onnx.load`` would first read the whole file into a bytes object."""
    model = onnx.ModelProto()
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return model  # mmap refuses empty files; an empty message is refused below like any non-model
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
            model.ParseFromString(view)
    return model


def _load(path: Path, shown: str) -> onnx.ModelProto:
    try:
        model = _parse(path)
    except OSError as exc:
        msg = f"cannot read model {shown}: {exc.strerror or exc}"
        raise BuildError(msg, code="bad_model") from None
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise unrelated types for corrupt files
        msg = f"{shown} is not an ONNX model ({type(exc).__name__}: {exc})"
        raise BuildError(msg, code="bad_model") from None
    # Protobuf parses many byte strings as an empty message; a model has a version and nodes.
    if model.ir_version <= 0 or not model.graph.node:
        msg = f"{shown} is not an ONNX model (no IR version or no graph nodes)"
        raise BuildError(msg, code="bad_model")
    if any(uses_external_data(tensor) for tensor in model.graph.initializer):
        msg = f"{shown} keeps weights in external data files; a bundle ships one self-contained model file"
        raise BuildError(msg, code="external_data")
    return model


def _opset(model: onnx.ModelProto, domains: tuple[str, ...]) -> int | None:
    for entry in model.opset_import:
        if entry.domain in domains:
            return int(entry.version)
    return None


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and _SYMBOLIC_DIM.fullmatch(dim.dim_param):
        return dim.dim_param
    return "?"


def _spec(value: onnx.ValueInfoProto, role: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        found = kind or "value of unknown type"
        msg = f"{role} {value.name!r} is a {found}, not a tensor (export classifiers without ZipMap)"
        raise BuildError(msg, code="unsupported_tensor")
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        type_name = TensorProto.DataType.Name(tensor.elem_type)
        msg = f"{role} {value.name!r} has element type {type_name}, which a bundle contract cannot express"
        raise BuildError(msg, code="unsupported_tensor")
    if not tensor.HasField("shape"):
        msg = f"{role} {value.name!r} has no declared rank; export the model with tensor shapes"
        raise BuildError(msg, code="unsupported_tensor")
    try:
        return TensorSpec(name=value.name, dtype=dtype, shape=tuple(_dim(d) for d in tensor.shape.dim))
    except ValidationError as exc:
        msg = f"{role} {value.name!r} cannot be described: {exc.errors()[0]['msg']}"
        raise BuildError(msg, code="unsupported_tensor") from None
