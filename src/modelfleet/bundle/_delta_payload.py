"""A tensor payload's bytes in either format version: values (dense) or positions + values (sparse).

Version 1: one zstd frame over the packed byte planes (sparse: a varint count,
the gaps as four u4 planes, the value planes). Version 2: every packed plane is
its own stream with its own coder (``_delta_streams``); sparse: a varint count,
the number of gap-varint bytes, the gap-varint stream, the value planes. Both are
read with every length bounded by the tensor's element count.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import zstandard

from modelfleet.bundle._delta_format import ReadBuffer, varint
from modelfleet.bundle._delta_generic import bounded_decompress
from modelfleet.bundle._delta_planes import byte_planes, pack_plane, pack_planes, plane_bound, read_plane, unpack_planes
from modelfleet.bundle._delta_positions import MAX_GAP_BYTES, gap_varints, positions_from_varints
from modelfleet.bundle._delta_streams import decode_stream, encode_stream
from modelfleet.errors import DeltaError

__all__ = ["MAX_SPARSE_COUNT", "dense_payload", "read_dense", "read_sparse", "sparse_payload"]

MAX_SPARSE_COUNT = 1 << 32  # positions are coded below 2**32
Words = npt.NDArray[np.unsignedinteger]
Positions = npt.NDArray[np.int64]


# ------------------------------------------------------------------ writing


def _gaps_u4(positions: Positions) -> Words:
    """Gaps between changed elements as little-endian u4 (version 1)."""
    gaps: Words = (np.diff(positions, prepend=-1) - 1).astype("<u4")
    return gaps


def _planes(values: Words, level: int) -> bytes:
    return b"".join(encode_stream(pack_plane(np.ascontiguousarray(plane)), level) for plane in byte_planes(values))


def dense_payload(values: Words, level: int, version: int) -> bytes:
    """Every element's value (a difference or a new value)."""
    if version == 1:
        return zstandard.ZstdCompressor(level=level).compress(pack_planes(values))
    return _planes(values, level)


def sparse_payload(positions: Positions, values: Words, level: int, version: int) -> bytes:
    """The changed positions (increasing, below 2**32) and their values."""
    if version == 1:
        body = varint(len(positions)) + pack_planes(_gaps_u4(positions)) + pack_planes(values)
        return zstandard.ZstdCompressor(level=level).compress(body)
    gaps = gap_varints(positions)
    head = varint(len(positions)) + varint(gaps.size)
    return head + encode_stream(pack_plane(gaps), level) + _planes(values, level)


# ------------------------------------------------------------------ reading, version 1


def _frame(payload: bytes | memoryview, most: int, what: str) -> ReadBuffer:
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


def _sparse_v1(payload: bytes | memoryview, count: int, dtype: np.dtype[np.unsignedinteger]) -> tuple[Positions, Words]:
    most = 10 + 4 * plane_bound(count) + dtype.itemsize * plane_bound(count)
    body = _frame(payload, most, "a sparse tensor payload")
    changed = body.varint()
    if changed > count:
        raise DeltaError("a sparse tensor changes more elements than it has", code="corrupt")
    gaps = unpack_planes(body, changed, np.dtype("<u4")).astype(np.int64)
    values = unpack_planes(body, changed, dtype)
    positions = np.cumsum(gaps + 1) - 1
    if body.remaining or (changed and positions[-1] >= count):
        raise DeltaError("a sparse tensor's positions run past its end", code="corrupt")
    return positions, values


# ------------------------------------------------------------------ reading, version 2


def _read_planes(buffer: ReadBuffer, count: int, dtype: np.dtype[np.unsignedinteger], what: str) -> Words:
    planes = np.empty((count, dtype.itemsize), dtype=np.uint8)
    for index in range(dtype.itemsize):
        planes[:, index] = _read_one_plane(buffer, count, what)
    words: Words = planes.view(dtype).reshape(-1)
    return words


def _read_one_plane(buffer: ReadBuffer, count: int, what: str) -> npt.NDArray[np.uint8]:
    stream = ReadBuffer(decode_stream(buffer, plane_bound(count), what), what)
    plane = read_plane(stream, count)
    if stream.remaining:
        msg = f"{what} holds bytes after its plane"
        raise DeltaError(msg, code="corrupt")
    return plane


def _sparse_v2(payload: bytes | memoryview, count: int, dtype: np.dtype[np.unsignedinteger]) -> tuple[Positions, Words]:
    what = "a sparse tensor payload"
    buffer = ReadBuffer(payload, what)
    changed, gap_bytes = buffer.varint(), buffer.varint()
    if changed > count or count >= MAX_SPARSE_COUNT:
        raise DeltaError("a sparse tensor changes more elements than it has", code="corrupt")
    if not changed <= gap_bytes <= MAX_GAP_BYTES * changed:
        raise DeltaError("a sparse tensor's gap stream cannot hold its count of changes", code="corrupt")
    positions = positions_from_varints(_read_one_plane(buffer, gap_bytes, what), changed, count)
    values = _read_planes(buffer, changed, dtype, what)
    if buffer.remaining:
        raise DeltaError("a sparse tensor payload holds bytes after its planes", code="corrupt")
    return positions, values


# ------------------------------------------------------------------ reading


def read_sparse(
    payload: bytes | memoryview, count: int, dtype: np.dtype[np.unsignedinteger], version: int
) -> tuple[Positions, Words]:
    """Positions and values of a sparse payload for a tensor of ``count`` elements.

    Raises:
        DeltaError: ``corrupt`` or ``truncated`` when the payload does not fit the tensor.
    """
    return (_sparse_v1 if version == 1 else _sparse_v2)(payload, count, dtype)


def read_dense(payload: bytes | memoryview, count: int, dtype: np.dtype[np.unsignedinteger], version: int) -> Words:
    """All ``count`` values of a dense payload.

    Raises:
        DeltaError: ``corrupt`` or ``truncated`` when the payload does not fit the tensor.
    """
    what = "a dense tensor payload"
    if version == 1:
        buffer = _frame(payload, dtype.itemsize * plane_bound(count), what)
        values = unpack_planes(buffer, count, dtype)
    else:
        buffer = ReadBuffer(payload, what)
        values = _read_planes(buffer, count, dtype, what)
    if buffer.remaining:
        msg = f"{what} holds bytes after its planes"
        raise DeltaError(msg, code="corrupt")
    return values
