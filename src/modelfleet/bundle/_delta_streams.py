"""One coded stream of a version-2 tensor payload: a coder id, the sizes, the coded bytes (ADR 0009).

Each byte plane (and the sparse gap stream) is coded on its own, so one plane's
statistics never share an entropy table with another's, by whichever coder is
smallest for it: ``stored`` for random low mantissa bytes, ``zstd`` (Huffman,
within about 1% of the order-0 entropy on high-entropy planes) or ``lzma`` (raw
LZMA2: an adaptive binary range coder, which codes a skewed plane of mostly
zero codes well below Huffman's one bit per byte). Layout: one byte coder id,
the decoded length and the coded length (LEB128 varints), the coded bytes.
Decoding is bounded by the decoded length the caller allows, never by what the
stream claims.
"""

from __future__ import annotations

import enum
import lzma

import numpy as np
import zstandard

from modelfleet.bundle._delta_format import ReadBuffer, varint
from modelfleet.bundle._delta_generic import bounded_decompress
from modelfleet.bundle._delta_planes import entropy_bytes
from modelfleet.errors import DeltaError

__all__ = ["StreamCoder", "decode_stream", "encode_stream"]

_LZMA_DICT = 1 << 16  # matches barely help on weight planes; the range coder is what counts
_LZMA_DECODE = ({"id": lzma.FILTER_LZMA2, "dict_size": _LZMA_DICT},)
# Normal mode prices literal against match per byte (fast mode does not); bt2 with short nice_len keeps it quick.
_LZMA_ENCODE = (
    {
        "id": lzma.FILTER_LZMA2,
        "dict_size": _LZMA_DICT,
        "lc": 0,
        "lp": 0,
        "pb": 0,
        "mode": lzma.MODE_NORMAL,
        "mf": lzma.MF_BT2,
        "nice_len": 8,
        "depth": 1,
    },
)
_LZMA_BELOW = 0.75  # lzma is tried on streams under 6 bits/byte of entropy (above, Huffman is within ~1%)
_LZMA_ALWAYS = 1 << 18  # ... and on any stream this small, where trying costs nothing
_SAMPLE = 1 << 20


class StreamCoder(enum.IntEnum):
    """How one stream's bytes are coded."""

    STORED = 0
    ZSTD = 1
    LZMA = 2


def _estimate(raw: bytes) -> float:
    """Order-0 entropy in bytes of ``raw`` (an evenly strided sample of large streams, scaled)."""
    values = np.frombuffer(raw, dtype=np.uint8)
    step = max(1, values.size // _SAMPLE)
    sample = values[::step]
    return entropy_bytes(sample) * values.size / max(1, sample.size)


def _lzma(raw: bytes) -> bytes:
    return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_ENCODE)


def _candidates(raw: bytes, level: int) -> dict[StreamCoder, bytes]:
    # zstd gives up on random bytes in milliseconds, so it is always tried; lzma only where it can win.
    coded = {StreamCoder.STORED: raw}
    coded[StreamCoder.ZSTD] = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    if len(raw) <= _LZMA_ALWAYS or _estimate(raw) < _LZMA_BELOW * len(raw):
        coded[StreamCoder.LZMA] = _lzma(raw)
    return coded


def encode_stream(raw: bytes, level: int) -> bytes:
    """Code ``raw`` with the coder that makes it smallest; ``level`` is zstd's."""
    coder, data = min(_candidates(raw, level).items(), key=lambda option: len(option[1]))
    return bytes([coder]) + varint(len(raw)) + varint(len(data)) + data


def _lzma_decode(data: bytes | memoryview, size: int, what: str) -> bytes:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_DECODE)
    try:
        raw = decompressor.decompress(bytes(data), max_length=size)
    except lzma.LZMAError as exc:
        msg = f"{what} does not decompress: {exc}"
        raise DeltaError(msg, code="corrupt") from None
    if len(raw) != size or not decompressor.eof or decompressor.unused_data:
        msg = f"{what} does not decompress to the {size} bytes it declares"
        raise DeltaError(msg, code="corrupt")
    return raw


def decode_stream(buffer: ReadBuffer, most: int, what: str) -> bytes:
    """Read one coded stream from ``buffer`` and return its decoded bytes (at most ``most``).

    Raises:
        DeltaError: ``corrupt`` for an unknown coder, a size beyond ``most`` or bytes
            that do not decode to the declared size; ``truncated`` when the stream ends early.
    """
    (coder,) = buffer.take(1)
    size, coded = buffer.varint(), buffer.varint()
    if size > most:
        msg = f"{what} declares {size} bytes; it cannot hold more than {most}"
        raise DeltaError(msg, code="corrupt")
    data = buffer.take(coded)
    if coder == StreamCoder.STORED:
        if coded != size:
            msg = f"{what} is stored but its two lengths differ"
            raise DeltaError(msg, code="corrupt")
        return bytes(data)
    if coder == StreamCoder.ZSTD:
        return bounded_decompress(data, size, what)
    if coder == StreamCoder.LZMA:
        return _lzma_decode(data, size, what)
    msg = f"{what} names coder {coder}; this reader knows 0 (stored), 1 (zstd) and 2 (lzma)"
    raise DeltaError(msg, code="corrupt")
