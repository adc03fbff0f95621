"""One tensor's change: unchanged, sparse (positions + values) or dense, in the right arithmetic domain.

The difference is wrapping subtraction for integers (a re-quantized weight that
moved by one step is ``1``) and XOR of the bit patterns for floats (a slightly
fine-tuned float keeps sign, exponent and high mantissa bits, so its XOR has
zero high bytes). Bytes are grouped by significance (byte planes) before
entropy coding, so the near-constant high planes compress to almost nothing;
``_delta_payload`` lays the planes out per format version.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

from modelfleet.bundle._delta_format import DELTA_FORMAT_VERSION
from modelfleet.bundle._delta_onnx import ElementKind
from modelfleet.bundle._delta_payload import MAX_SPARSE_COUNT, dense_payload, read_dense, read_sparse, sparse_payload
from modelfleet.bundle._delta_planes import planes_entropy
from modelfleet.errors import DeltaError

__all__ = ["TensorMode", "decode_tensor", "encode_tensor"]

_UINT: dict[int, np.dtype[np.unsignedinteger]] = {
    1: np.dtype(np.uint8),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}
_SPARSE_MAX_SHARE = 0.5  # above this share of changed elements, positions cost more than they save
_CLOSE = 1.15  # estimates this close are both compressed and the smaller kept


class TensorMode(enum.IntEnum):
    """How a tensor's payload is coded."""

    UNCHANGED = 0
    SPARSE = 1  # changed positions + their differences (a sparse fine-tune)
    DENSE = 2  # every difference (a fine-tune)
    SPARSE_VALUES = 3  # changed positions + their new values (a partial retrain)
    DENSE_VALUES = 4  # the new values (a retrain: fresh values cost less than differences)


Words = npt.NDArray[np.unsignedinteger]


def _words(data: bytes | memoryview, kind: ElementKind) -> Words:
    words: Words = np.frombuffer(data, dtype=_UINT[kind.itemsize])
    return words


def _zigzag(diff: Words) -> Words:
    """Map wrapping differences to small unsigned codes: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    bits = diff.dtype.itemsize * 8
    signed = diff.view(diff.dtype.str.replace("u", "i"))
    return ((signed << 1) ^ (signed >> (bits - 1))).view(diff.dtype)


def _unzigzag(codes: Words) -> Words:
    one = codes.dtype.type(1)
    return (codes >> one) ^ (np.zeros_like(codes) - (codes & one))


def _difference(old: Words, new: Words, kind: ElementKind) -> Words:
    return _zigzag(new - old) if kind.integer else new ^ old  # unsigned arithmetic wraps


def _undo(old: Words, diff: Words, kind: ElementKind) -> Words:
    return old + _unzigzag(diff) if kind.integer else old ^ diff


def _gaps(positions: npt.NDArray[np.intp]) -> Words:
    """Gaps between changed elements (mostly small), as little-endian u4: what the estimate looks at."""
    gaps: Words = (np.diff(positions, prepend=-1) - 1).astype("<u4")
    return gaps


def encode_tensor(
    old: bytes | memoryview,
    new: bytes | memoryview,
    kind: ElementKind,
    level: int,
    version: int = DELTA_FORMAT_VERSION,
) -> tuple[int, bytes]:
    """Return ``(mode, payload)`` that turns ``old`` into ``new`` (same length), the mode chosen by estimate.

    Each candidate's cost is estimated from order-0 entropies (sampled for large
    tensors) and only the cheapest is compressed, which keeps a 35 MB model's
    encode to seconds.
    """
    new_words = _words(new, kind)
    diff = _difference(_words(old, kind), new_words, kind)
    positions = np.flatnonzero(diff)
    if positions.size == 0:
        return TensorMode.UNCHANGED, b""
    estimates: dict[TensorMode, float] = {
        TensorMode.DENSE: planes_entropy(diff),
        TensorMode.DENSE_VALUES: planes_entropy(new_words),
    }
    if positions.size <= _SPARSE_MAX_SHARE * diff.size and diff.size < MAX_SPARSE_COUNT:
        where = planes_entropy(_gaps(positions))
        estimates[TensorMode.SPARSE] = where + planes_entropy(diff[positions])
        estimates[TensorMode.SPARSE_VALUES] = where + planes_entropy(new_words[positions])
    ranked = sorted(estimates, key=lambda m: estimates[m])
    close = [m for m in ranked[:2] if estimates[m] <= _CLOSE * estimates[ranked[0]]]
    coded = [(mode, _payload(mode, diff, new_words, positions, (level, version))) for mode in close]
    return min(coded, key=lambda option: len(option[1]))


def _payload(
    mode: TensorMode, diff: Words, new_words: Words, positions: npt.NDArray[np.intp], coding: tuple[int, int]
) -> bytes:
    level, version = coding
    if mode in (TensorMode.DENSE, TensorMode.DENSE_VALUES):
        return dense_payload(diff if mode == TensorMode.DENSE else new_words, level, version)
    values = diff[positions] if mode == TensorMode.SPARSE else new_words[positions]
    return sparse_payload(positions, values, level, version)


def decode_tensor(old: bytes, mode: int, payload: bytes | memoryview, kind: ElementKind, version: int) -> bytes:
    """Rebuild a tensor's new bytes from its old bytes and a payload of format ``version``.

    Raises:
        DeltaError: ``corrupt`` when the payload does not fit the tensor.
    """
    if mode == TensorMode.UNCHANGED:
        return old
    dtype = _UINT[kind.itemsize]
    count = len(old) // kind.itemsize
    old_words = _words(old, kind)
    if mode in (TensorMode.SPARSE, TensorMode.SPARSE_VALUES):
        positions, values = read_sparse(payload, count, dtype, version)
        if mode == TensorMode.SPARSE_VALUES:
            new = old_words.copy()
            new[positions] = values
            return new.tobytes()
        diff = np.zeros(count, dtype=dtype)
        diff[positions] = values
        return _undo(old_words, diff, kind).tobytes()
    if mode == TensorMode.DENSE:
        return _undo(old_words, read_dense(payload, count, dtype, version), kind).tobytes()
    if mode == TensorMode.DENSE_VALUES:
        return read_dense(payload, count, dtype, version).tobytes()
    msg = f"tensor mode {mode} is unknown"
    raise DeltaError(msg, code="corrupt")
