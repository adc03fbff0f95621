"""The validation set ``bundle build`` measures on, and its fit to the model's contract.

Arrays are cast only within a kind (float64 to float32, integers or booleans to
floats). Anything else that does not fit is refused with the mismatch named
(which input, which axis, expected and got): a reshaped or reinterpreted set would
produce evidence about some other model.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelfleet.bundle._inference import Array
from modelfleet.bundle._manifest import TensorSpec
from modelfleet.bundle._onnx_graph import numpy_dtype
from modelfleet.errors import ValidationSetError

__all__ = ["ValidationSet", "bind_inputs", "check_labels", "load_validation_set"]

SINGLE_INPUT = "x"
LABELS = "y"


@dataclass(frozen=True, slots=True)
class ValidationSet:
    """Held-out inputs (model input name, or ``x`` for a single-input model, to array) and optional labels."""

    inputs: Mapping[str, Array]
    labels: Array | None


def load_validation_set(path: Path, input_names: Sequence[str] | None = None) -> ValidationSet:
    """Read a ``VAL.npz``: ``x`` (single-input models) or one array per input name, and optional ``y``.

    Args:
        path: the ``.npz`` file; it is read with ``allow_pickle=False``.
        input_names: the model's input names when known; ``None`` or one name means
            the inputs are in ``x``.

    Raises:
        ValidationSetError: unreadable or not ``.npz``, pickled objects, a missing or
            unexpected array, labels that are not one integer per row.
    """
    arrays = _read_npz(path)
    labels = arrays.pop(LABELS, None)
    if input_names is None or len(input_names) == 1:
        inputs = {(input_names[0] if input_names else SINGLE_INPUT): _take(arrays, SINGLE_INPUT, path)}
    else:
        inputs = {name: _take(arrays, name, path) for name in input_names}
    if arrays:
        msg = f"{path}: unexpected arrays {sorted(arrays)}; expected {sorted(inputs)} and optionally {LABELS!r}"
        raise ValidationSetError(msg, code="unexpected_array")
    if labels is not None:
        _check_label_shape(labels, _rows(next(iter(inputs.items()))))
    return ValidationSet(inputs=inputs, labels=labels)


def _read_npz(path: Path) -> dict[str, Array]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as exc:
        msg = f"cannot read validation set {path}: {exc.strerror or exc}"
        raise ValidationSetError(msg, code="unreadable") from None
    except ValueError as exc:
        # numpy reads anything without the .npy/.npz magic as a pickle, which allow_pickle=False refuses.
        msg = f"{path} is not an .npz archive of plain arrays (numpy: {exc})"
        raise ValidationSetError(msg, code="not_npz") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        msg = f"{path} is not a readable .npz archive ({exc})"
        raise ValidationSetError(msg, code="unreadable") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        msg = f"{path} holds a single array; save an archive with numpy.savez(path, x=..., y=...)"
        raise ValidationSetError(msg, code="not_npz")
    with loaded:
        return {name: _member(loaded, name, path) for name in loaded.files}


def _member(archive: np.lib.npyio.NpzFile, name: str, path: Path) -> Array:
    try:
        return np.asarray(archive[name])
    except ValueError:
        msg = f"{path}: array {name!r} holds pickled Python objects; only numeric arrays are accepted"
        raise ValidationSetError(msg, code="pickled_array") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        msg = f"{path}: array {name!r} cannot be read ({exc})"
        raise ValidationSetError(msg, code="unreadable") from None


def _take(arrays: dict[str, Array], name: str, path: Path) -> Array:
    if name not in arrays:
        held = ", ".join(repr(key) for key in sorted(arrays)) or "nothing"
        msg = f"{path} has no array {name!r} (the model's inputs); it holds {held}"
        raise ValidationSetError(msg, code="missing_array")
    return arrays.pop(name)


def _rows(item: tuple[str, Array]) -> int:
    name, array = item
    if array.ndim == 0:
        msg = f"validation array {name!r} is a scalar; inputs need one row per example on axis 0"
        raise ValidationSetError(msg, code="rank")
    return int(array.shape[0])


def _check_label_shape(labels: Array, rows: int) -> None:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        msg = f"labels 'y' must be a 1-D array of integer class indices, got {labels.dtype}{list(labels.shape)}"
        raise ValidationSetError(msg, code="label_dtype")
    if len(labels) != rows:
        msg = f"labels 'y' have {len(labels)} rows but the inputs have {rows}"
        raise ValidationSetError(msg, code="label_count")


def check_labels(labels: Array, rows: int, n_classes: int) -> npt.NDArray[np.int64]:
    """Return the labels as int64 after checking one class index in ``[0, n_classes)`` per row.

    Raises:
        ValidationSetError: ``label_dtype``, ``label_count`` or ``label_range``.
    """
    _check_label_shape(labels, rows)
    outside = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if outside.size:
        row = int(outside[0])
        msg = f"label {labels[row]} at row {row} is not a class index of this model (0..{n_classes - 1})"
        raise ValidationSetError(msg, code="label_range")
    return labels.astype(np.int64)


def bind_inputs(validation: ValidationSet, specs: Sequence[TensorSpec]) -> dict[str, Array]:
    """Match the validation arrays to the model inputs and cast them to the contract dtypes.

    Raises:
        ValidationSetError: an input is missing or unexpected, or an array does not
            fit its input (dtype, rank, fixed axis, shared symbolic axis, rows, values).
    """
    arrays = _by_input_name(validation.inputs, specs)
    bound = {spec.name: _fit(spec, arrays[spec.name]) for spec in specs}
    _check_rows(bound, specs)
    _check_symbols(bound, specs)
    return bound


def _by_input_name(arrays: Mapping[str, Array], specs: Sequence[TensorSpec]) -> Mapping[str, Array]:
    names = [spec.name for spec in specs]
    if len(specs) == 1 and set(arrays) == {SINGLE_INPUT}:
        return {names[0]: arrays[SINGLE_INPUT]}
    missing = [name for name in names if name not in arrays]
    if missing:
        msg = f"the validation set has no array for model input(s) {missing}; it holds {sorted(arrays)}"
        raise ValidationSetError(msg, code="missing_array")
    unexpected = sorted(set(arrays) - set(names))
    if unexpected:
        msg = f"the validation set holds arrays {unexpected} that are not model inputs ({names})"
        raise ValidationSetError(msg, code="unexpected_array")
    return arrays


def _fit(spec: TensorSpec, array: Array) -> Array:
    target = numpy_dtype(spec)
    if not np.can_cast(array.dtype, target, casting="same_kind"):
        msg = f"input {spec.describe()}: the validation array is {array.dtype}, which cannot be cast to {target}"
        raise ValidationSetError(msg, code="dtype")
    if array.ndim != len(spec.shape):
        got = f"rank {array.ndim} {list(array.shape)}"
        msg = f"input {spec.describe()} has rank {len(spec.shape)}, the validation array has {got}"
        raise ValidationSetError(msg, code="rank")
    for axis, dim in enumerate(spec.shape[1:], start=1):
        if isinstance(dim, int) and array.shape[axis] != dim:
            msg = f"input {spec.describe()} axis {axis}: expected {dim}, got {array.shape[axis]}"
            raise ValidationSetError(msg, code="shape")
    cast = np.ascontiguousarray(array, dtype=target)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        row = int(np.argwhere(~np.isfinite(cast))[0][0])
        msg = f"input {spec.name!r} holds NaN or infinity (first at row {row})"
        raise ValidationSetError(msg, code="non_finite")
    return cast


def _check_rows(bound: Mapping[str, Array], specs: Sequence[TensorSpec]) -> None:
    rows = {name: int(array.shape[0]) for name, array in bound.items()}
    if len(set(rows.values())) > 1:
        msg = "inputs have different row counts: " + ", ".join(f"{name}={count}" for name, count in rows.items())
        raise ValidationSetError(msg, code="row_count")
    count = next(iter(rows.values()))
    if count == 0:
        raise ValidationSetError("the validation set has no rows", code="empty")
    for spec in specs:
        batch = spec.shape[0]
        if isinstance(batch, int) and count % batch:
            msg = f"input {spec.describe()} has a fixed batch of {batch}; {count} validation rows is not a multiple"
            raise ValidationSetError(msg, code="shape")


def _check_symbols(bound: Mapping[str, Array], specs: Sequence[TensorSpec]) -> None:
    """A symbolic dimension named twice (``seq`` in two inputs) must have one size."""
    seen: dict[str, tuple[int, str]] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if not isinstance(dim, str) or dim == "?":
                continue
            size = int(bound[spec.name].shape[axis])
            first = seen.setdefault(dim, (size, f"{spec.name!r} axis {axis}"))
            if first[0] != size:
                msg = f"dimension {dim!r} is {first[0]} at {first[1]} but {size} at {spec.name!r} axis {axis}"
                raise ValidationSetError(msg, code="shape")
