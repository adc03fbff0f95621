"""Run a model with ONNX Runtime in bounded batches, failures turned into ``BuildError``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from modelfleet.bundle._manifest import TensorSpec
from modelfleet.errors import BuildError

__all__ = ["Array", "Session", "batch_rows", "batches", "evenly_spaced", "fixed_batch"]

Array = npt.NDArray[Any]

_BATCH_BYTES = 16 * 1024 * 1024  # input bytes per run: large enough to amortize calls, small enough for a laptop
_MAX_BATCH_ROWS = 1024


class Session:
    """One CPU inference session over a model file.

    Args:
        path: the ONNX model.
        what: how messages name the model (``"the model"``, ``"the INT8 model"``).

    Raises:
        BuildError: ``bad_model`` when ONNX Runtime cannot load the file.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.what = what
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business here
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT's pybind errors share no base below Exception
            msg = f"ONNX Runtime cannot load {what}: {exc}"
            raise BuildError(msg, code="bad_model") from None

    def run(self, feeds: Mapping[str, Array], outputs: Sequence[str] | None = None) -> dict[str, Array]:
        """Run once and return the named outputs (all outputs when ``outputs`` is ``None``).

        Raises:
            BuildError: ``inference_failed`` when ONNX Runtime refuses the inputs or fails.
        """
        names = list(outputs) if outputs is not None else [o.name for o in self._session.get_outputs()]
        try:
            results = self._session.run(names, dict(feeds))
        except Exception as exc:  # noqa: BLE001 - see __init__
            msg = f"{self.what} failed on validation inputs: {exc}"
            raise BuildError(msg, code="inference_failed") from None
        return {name: np.asarray(result) for name, result in zip(names, results, strict=True)}


def fixed_batch(specs: Sequence[TensorSpec]) -> int | None:
    """The batch size the model insists on (an int on axis 0 of an input), if any."""
    for spec in specs:
        if spec.shape and isinstance(spec.shape[0], int):
            return spec.shape[0]
    return None


def batch_rows(specs: Sequence[TensorSpec], inputs: Mapping[str, Array]) -> int:
    """Rows per run: the model's fixed batch size if it has one, else what fits the byte budget."""
    fixed = fixed_batch(specs)
    if fixed is not None:
        return fixed
    row_bytes = sum(array[:1].nbytes for array in inputs.values()) or 1
    return max(1, min(_MAX_BATCH_ROWS, _BATCH_BYTES // row_bytes))


def batches(
    inputs: Mapping[str, Array], rows: int, indices: npt.NDArray[np.intp] | None = None
) -> Iterator[dict[str, Array]]:
    """Yield feeds of ``rows`` rows each (the last may be shorter), over ``indices`` or all rows."""
    total = len(indices) if indices is not None else len(next(iter(inputs.values())))
    for start in range(0, total, rows):
        if indices is None:
            yield {name: array[start : start + rows] for name, array in inputs.items()}
        else:
            chosen = indices[start : start + rows]
            yield {name: array[chosen] for name, array in inputs.items()}


def evenly_spaced(rows: int, count: int, multiple: int = 1) -> npt.NDArray[np.intp]:
    """Pick about ``count`` evenly spaced row indices (first and last included), never random.

    Args:
        rows: rows available (a multiple of ``multiple``).
        count: rows wanted.
        multiple: a fixed batch size the number of picked rows must be a multiple of.
    """
    wanted = min(rows, max(multiple, count // multiple * multiple))
    return np.linspace(0, rows - 1, wanted).round().astype(np.intp)
