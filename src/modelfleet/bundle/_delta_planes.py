"""Byte planes, each packed to the fewest bits that hold most of its values, before entropy coding.

A weight difference is split into planes by significance (all low bytes, then
the next, ...). A plane of small values (an INT8 fine-tune: mostly 0 and +-1
after zigzag; the sign and exponent plane of a float fine-tune: mostly 0) packs
2, 4 or 8 values into a byte, with larger values escaped and listed after, so
no coder pays per byte what a value needs per bit. Layout per plane: one byte
``bits`` (1, 2, 4 or 8), the packed codes, then one byte per escaped value.
Format 1 sends all planes through one zstd frame; format 2 codes each packed
plane on its own (``_delta_streams``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from modelfleet.bundle._delta_format import ReadBuffer
from modelfleet.errors import DeltaError

__all__ = [
    "byte_planes",
    "entropy_bytes",
    "pack_plane",
    "pack_planes",
    "plane_bound",
    "planes_entropy",
    "read_plane",
    "unpack_planes",
]

_WIDTHS = (1, 2, 4)
_SAMPLE = 1 << 18  # values looked at to choose a width: choosing is an estimate, packing is exact
Bytes = npt.NDArray[np.uint8]


def _sample(values: Bytes) -> tuple[Bytes, float]:
    """An evenly strided sample of at most ``_SAMPLE`` values and the factor back to the full size."""
    step = max(1, values.size // _SAMPLE)
    sample = values[::step]
    return sample, values.size / max(1, sample.size)


def entropy_bytes(values: Bytes) -> float:
    """Order-0 empirical entropy of ``values`` in bytes: what an ideal entropy coder would need."""
    if values.size == 0:
        return 0.0
    counts = np.bincount(values, minlength=256)
    counts = counts[counts > 0]
    p = counts / values.size
    return float(-(counts * np.log2(p)).sum() / 8)


def byte_planes(values: npt.NDArray[np.unsignedinteger]) -> npt.NDArray[np.uint8]:
    """The byte planes of little-endian words: row ``i`` holds byte ``i`` of every word (a strided view)."""
    planes: npt.NDArray[np.uint8] = values.view(np.uint8).reshape(-1, values.dtype.itemsize).T
    return planes


def planes_entropy(values: npt.NDArray[np.unsignedinteger]) -> float:
    """Sum of the order-0 entropies (bytes) of the byte planes of ``values``."""
    total = 0.0
    for plane in byte_planes(values):
        sample, scale = _sample(plane)
        total += entropy_bytes(np.ascontiguousarray(sample)) * scale
    return total


def _pack(plane: Bytes, bits: int) -> tuple[Bytes, Bytes]:
    """Return the packed codes and the escaped values of a plane at ``bits`` per value."""
    escape = (1 << bits) - 1
    per_byte = 8 // bits
    codes = np.minimum(plane, escape).astype(np.uint8)
    padded = np.zeros(-(-plane.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: plane.size] = codes
    groups = padded.reshape(-1, per_byte)
    packed = np.zeros(groups.shape[0], dtype=np.uint8)
    for slot in range(per_byte):
        packed |= groups[:, slot] << np.uint8(bits * slot)
    return packed, plane[plane >= escape]


def _unpack(packed: Bytes, bits: int, count: int) -> Bytes:
    per_byte = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    slots = [(packed >> np.uint8(bits * slot)) & mask for slot in range(per_byte)]
    return np.stack(slots, axis=1).reshape(-1)[:count]


def pack_plane(plane: Bytes) -> bytes:
    """Pack one byte plane: a bits byte (1, 2, 4 or 8), the codes, then the escaped values."""
    sample, _ = _sample(plane)
    best_bits, best_cost = 8, entropy_bytes(sample)
    for bits in _WIDTHS:
        packed, escaped = _pack(sample, bits)
        cost = entropy_bytes(packed) + entropy_bytes(escaped) + 0.05 * escaped.size
        if cost < best_cost:
            best_bits, best_cost = bits, cost
    if best_bits == 8:  # noqa: PLR2004 - a plain byte plane
        return bytes([8]) + plane.tobytes()
    packed, escaped = _pack(plane, best_bits)
    return bytes([best_bits]) + packed.tobytes() + escaped.tobytes()


def pack_planes(values: npt.NDArray[np.unsignedinteger]) -> bytes:
    """Split little-endian words into byte planes and pack each one."""
    return b"".join(pack_plane(np.ascontiguousarray(plane)) for plane in byte_planes(values))


def plane_bound(count: int) -> int:
    """Largest packed form of a plane of ``count`` values: the bits byte, codes and escapes."""
    return 1 + 2 * count


def read_plane(buffer: ReadBuffer, count: int) -> Bytes:
    """Read one plane of ``count`` values written by :func:`pack_plane`."""
    (bits,) = buffer.take(1)
    if bits == 8:  # noqa: PLR2004 - a plain byte plane
        return np.frombuffer(buffer.take(count), dtype=np.uint8)
    if bits not in _WIDTHS:
        msg = f"a byte plane says {bits} bits per value; only 1, 2, 4 or 8 exist"
        raise DeltaError(msg, code="corrupt")
    codes = _unpack(np.frombuffer(buffer.take(-(-count * bits // 8)), dtype=np.uint8), bits, count)
    escape = (1 << bits) - 1
    plane = codes.copy()
    where = np.flatnonzero(codes == escape)
    plane[where] = np.frombuffer(buffer.take(where.size), dtype=np.uint8)
    return plane


def unpack_planes(
    buffer: ReadBuffer, count: int, dtype: np.dtype[np.unsignedinteger]
) -> npt.NDArray[np.unsignedinteger]:
    """Read ``count`` words of ``dtype`` written by :func:`pack_planes`."""
    planes = np.empty((count, dtype.itemsize), dtype=np.uint8)
    for index in range(dtype.itemsize):
        planes[:, index] = read_plane(buffer, count)
    return planes.view(dtype).reshape(-1)
