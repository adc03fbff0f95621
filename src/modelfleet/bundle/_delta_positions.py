"""Changed positions of a sparse tensor as LEB128 varints of the gaps between them (format version 2).

A retrain of 5% of the weights leaves gaps of about 19: one byte each, whose
order-0 entropy is the binary entropy of the change mask. Four fixed-width gap
planes (format version 1) cost three nearly empty planes and their framing;
varints keep it to one byte stream. Both directions are vectorized.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from modelfleet.errors import DeltaError

__all__ = ["MAX_GAP_BYTES", "gap_varints", "positions_from_varints"]

MAX_GAP_BYTES = 5  # a gap below 2**32 takes at most five 7-bit groups
Bytes = npt.NDArray[np.uint8]


def gap_varints(positions: npt.NDArray[np.intp]) -> Bytes:
    """LEB128 varints of the gaps between increasing ``positions`` (each below 2**32), first gap from -1."""
    gaps = (np.diff(positions, prepend=-1) - 1).astype(np.uint64)
    lengths = np.ones(gaps.size, dtype=np.int64)
    for group in range(1, MAX_GAP_BYTES):
        lengths += gaps >= np.uint64(1 << (7 * group))
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    for group in range(MAX_GAP_BYTES):
        longer = lengths > group
        if not longer.any():
            break
        low = (gaps[longer] >> np.uint64(7 * group)) & np.uint64(0x7F)
        more = np.where(lengths[longer] > group + 1, 0x80, 0)
        out[starts[longer] + group] = low.astype(np.uint8) | more.astype(np.uint8)
    return out


def _gaps(data: Bytes, ends: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
    """The value of each varint ending at ``ends`` (one int64 per gap, no per-byte index arrays)."""
    if ends.size == data.size:  # every gap below 128, the usual case: one byte each
        return data.astype(np.int64)
    lengths = np.diff(ends, prepend=-1)
    if int(lengths.max()) > MAX_GAP_BYTES:
        raise DeltaError("a sparse tensor's gap varint is longer than five bytes", code="corrupt")
    starts = ends - lengths + 1
    gaps = np.zeros(ends.size, dtype=np.int64)
    for group in range(int(lengths.max())):
        longer = np.flatnonzero(lengths > group)
        gaps[longer] |= (data[starts[longer] + group] & np.uint8(0x7F)).astype(np.int64) << (7 * group)
    return gaps


def positions_from_varints(data: Bytes, changed: int, count: int) -> npt.NDArray[np.int64]:
    """Decode ``changed`` gap varints into positions, each checked to lie inside ``count`` elements.

    Raises:
        DeltaError: ``corrupt`` when the bytes hold another number of varints, one
            longer than five bytes, or positions past the tensor's end.
    """
    ends = np.flatnonzero(data < 0x80)  # noqa: PLR2004 - the LEB128 continuation bit
    if ends.size != changed or (changed and ends[-1] != data.size - 1):
        raise DeltaError("a sparse tensor's gap varints do not match its count of changes", code="corrupt")
    if changed == 0:
        return np.zeros(0, dtype=np.int64)
    positions = _gaps(data, ends)
    del ends
    # Checked in float first: the positions end before ``count``, so the int64 running sum cannot overflow.
    if float(positions.sum(dtype=np.float64)) + changed > count:
        raise DeltaError("a sparse tensor's positions run past its end", code="corrupt")
    positions += 1
    np.cumsum(positions, out=positions)
    positions -= 1
    return positions
