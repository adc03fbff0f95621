"""One tensor's change: unchanged, sparse (positions + values) or dense, in the right arithmetic domain.

The difference is wrapping subtraction for integers (a re-quantized weight that
moved by one step is ``1``) and XOR of the bit patterns for floats (a slightly
fine-tuned float keeps sign, exponent and high mantissa bits, so its XOR has
zero high bytes). Bytes are grouped by significance (byte planes) before
zstandard, so the near-constant high planes compress to almost nothing.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt
import zstandard

from modelfleet.bundle._delta_format import ReadBuffer, varint
from modelfleet.bundle._delta_generic import bounded_decompress
from modelfleet.bundle._delta_onnx import ElementKind
from modelfleet.bundle._delta_planes import pack_planes, planes_entropy, unpack_planes
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


def _compress(body: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(body)


def _gaps(positions: npt.NDArray[np.intp]) -> Words:
    """Gaps between changed elements (mostly small), as little-endian u4."""
    gaps: Words = (np.diff(positions, prepend=-1) - 1).astype("<u4")
    return gaps


def _sparse(positions: npt.NDArray[np.intp], values: Words, level: int) -> bytes:
    return _compress(varint(len(positions)) + pack_planes(_gaps(positions)) + pack_planes(values), level)


def encode_tensor(old: bytes | memoryview, new: bytes | memoryview, kind: ElementKind, level: int) -> tuple[int, bytes]:
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
    if positions.size <= _SPARSE_MAX_SHARE * diff.size and diff.size < 1 << 32:
        where = planes_entropy(_gaps(positions))
        estimates[TensorMode.SPARSE] = where + planes_entropy(diff[positions])
        estimates[TensorMode.SPARSE_VALUES] = where + planes_entropy(new_words[positions])
    ranked = sorted(estimates, key=lambda m: estimates[m])
    close = [m for m in ranked[:2] if estimates[m] <= _CLOSE * estimates[ranked[0]]]
    coded = [(mode, _payload(mode, diff, new_words, positions, level)) for mode in close]
    return min(coded, key=lambda option: len(option[1]))


def _payload(mode: TensorMode, diff: Words, new_words: Words, positions: npt.NDArray[np.intp], level: int) -> bytes:
    if mode in (TensorMode.DENSE, TensorMode.DENSE_VALUES):
        return _compress(pack_planes(diff if mode == TensorMode.DENSE else new_words), level)
    values = diff[positions] if mode == TensorMode.SPARSE else new_words[positions]
    return _sparse(positions, values, level)


def _body(payload: bytes | memoryview, most: int, what: str) -> ReadBuffer:
    """Decompress a payload whose frame declares its size, refusing sizes beyond ``most``."""
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        msg = f"{what} is not a zstd frame"
        raise DeltaError(msg, code="corrupt") from None
    if size < 0 or size > most:
        msg = f"{what} declares a size it cannot have"
        raise DeltaError(msg, code="corrupt")
    return ReadBuffer(bounded_decompress(payload, size, what), what)


def _planes_bound(count: int, itemsize: int) -> int:
    """Largest packed form of ``count`` words: per plane a bits byte, codes and escapes."""
    return itemsize * (1 + 2 * count)


def _sparse_body(
    payload: bytes | memoryview, count: int, dtype: np.dtype[np.unsignedinteger]
) -> tuple[npt.NDArray[np.int64], Words]:
    most = 10 + _planes_bound(count, 4) + _planes_bound(count, dtype.itemsize)
    body = _body(payload, most, "a sparse tensor payload")
    changed = body.varint()
    if changed > count:
        raise DeltaError("a sparse tensor changes more elements than it has", code="corrupt")
    gaps = unpack_planes(body, changed, np.dtype("<u4")).astype(np.int64)
    values = unpack_planes(body, changed, dtype)
    positions = np.cumsum(gaps + 1) - 1
    if body.remaining or (changed and positions[-1] >= count):
        raise DeltaError("a sparse tensor's positions run past its end", code="corrupt")
    return positions, values


def _dense_body(payload: bytes | memoryview, count: int, dtype: np.dtype[np.unsignedinteger]) -> Words:
    body = _body(payload, _planes_bound(count, dtype.itemsize), "a dense tensor payload")
    values = unpack_planes(body, count, dtype)
    if body.remaining:
        raise DeltaError("a dense tensor payload holds bytes after its planes", code="corrupt")
    return values


def decode_tensor(old: bytes, mode: int, payload: bytes | memoryview, kind: ElementKind) -> bytes:
    """Rebuild a tensor's new bytes from its old bytes and the payload.

    Raises:
        DeltaError: ``corrupt`` when the payload does not fit the tensor.
    """
    if mode == TensorMode.UNCHANGED:
        return old
    dtype = _UINT[kind.itemsize]
    count = len(old) // kind.itemsize
    old_words = _words(old, kind)
    if mode in (TensorMode.SPARSE, TensorMode.SPARSE_VALUES):
        positions, values = _sparse_body(payload, count, dtype)
        if mode == TensorMode.SPARSE_VALUES:
            new = old_words.copy()
            new[positions] = values
            return new.tobytes()
        diff = np.zeros(count, dtype=dtype)
        diff[positions] = values
        return _undo(old_words, diff, kind).tobytes()
    if mode == TensorMode.DENSE:
        return _undo(old_words, _dense_body(payload, count, dtype), kind).tobytes()
    if mode == TensorMode.DENSE_VALUES:
        return _dense_body(payload, count, dtype).tobytes()
    msg = f"tensor mode {mode} is unknown"
    raise DeltaError(msg, code="corrupt")
