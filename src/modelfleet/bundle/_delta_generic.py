"""Generic byte deltas: zstandard with the old bytes as raw-content dictionary, and bsdiff4.

Both see the bundle as bytes. They are the fallback for payloads that are not
ONNX and the competitors the tensor codec must beat (the smaller wins per pair).
Decompression is bounded by sizes the caller knows, never by what a frame claims.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import bsdiff4
import zstandard

from modelfleet.errors import DeltaError

__all__ = [
    "bounded_decompress",
    "bsdiff4_apply",
    "bsdiff4_encode",
    "prefix_reader",
    "window_log",
    "zstd_prefix_encode",
]

_MIN_WINDOW_LOG, _MAX_WINDOW_LOG = 10, 31
_MAX_HASH_LOG, _MAX_CHAIN_LOG = 25, 26  # 128 MB + 256 MB of match tables at most (server side)
_BSDIFF_HEADER = struct.Struct("<8sqqq")


def window_log(prefix_size: int, target_size: int) -> int:
    """Return the window (log2) that lets the target reach back over the whole prefix."""
    return min(_MAX_WINDOW_LOG, max(_MIN_WINDOW_LOG, (prefix_size + target_size).bit_length()))


def _dictionary(prefix: bytes) -> zstandard.ZstdCompressionDict | None:
    return zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if prefix else None


def zstd_prefix_encode(prefix: bytes, target: bytes, level: int) -> bytes:
    """Compress ``target`` with ``prefix`` as raw-content dictionary and a window spanning both.

    The match tables are sized to the window (capped): with a level's default
    tables a large dictionary is mostly forgotten before the target starts.
    """
    log = window_log(len(prefix), len(target))
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=log,
        hash_log=min(_MAX_HASH_LOG, log - 1),
        chain_log=min(_MAX_CHAIN_LOG, log),
        enable_ldm=True,
        write_content_size=True,
    )
    compressor = zstandard.ZstdCompressor(dict_data=_dictionary(prefix), compression_params=params)
    return compressor.compress(target)


def prefix_reader(prefix: bytes, frame: bytes | memoryview, target_size: int) -> zstandard.ZstdDecompressionReader:
    """Return a stream over the decompressed frame; its window may not exceed what the sizes need."""
    max_window = 1 << window_log(len(prefix), target_size)
    decompressor = zstandard.ZstdDecompressor(dict_data=_dictionary(prefix), max_window_size=max_window)
    return decompressor.stream_reader(io.BytesIO(frame), read_across_frames=False)


def read_exactly(reader: zstandard.ZstdDecompressionReader, size: int, what: str) -> bytes:
    """Read ``size`` bytes of decompressed output, refusing a short or broken stream."""
    parts, remaining = [], size
    try:
        while remaining:
            chunk = reader.read(remaining)
            if not chunk:
                msg = f"{what} ends early: the delta is truncated or corrupt"
                raise DeltaError(msg, code="corrupt")
            parts.append(chunk)
            remaining -= len(chunk)
    except zstandard.ZstdError as exc:
        msg = f"{what} does not decompress: {exc}"
        raise DeltaError(msg, code="corrupt") from None
    return b"".join(parts)


def expect_end(reader: zstandard.ZstdDecompressionReader, what: str) -> None:
    """Refuse a stream that holds more than the sizes said."""
    try:
        extra = reader.read(1)
    except zstandard.ZstdError as exc:
        msg = f"{what} does not decompress: {exc}"
        raise DeltaError(msg, code="corrupt") from None
    if extra:
        msg = f"{what} holds more bytes than the delta declares"
        raise DeltaError(msg, code="corrupt")


def bounded_decompress(frame: bytes | memoryview, size: int, what: str, prefix: bytes = b"") -> bytes:
    """Decompress exactly ``size`` bytes; more, fewer or a broken frame is ``corrupt``."""
    reader = prefix_reader(prefix, frame, size)
    data = read_exactly(reader, size, what)
    expect_end(reader, what)
    return data


def bsdiff4_encode(base: bytes, target: bytes) -> bytes:
    """Return a BSDIFF40 patch (time O(n log n), memory about 17x the base on the encoder)."""
    patch: bytes = bsdiff4.diff(base, target)
    return patch


def bsdiff4_apply(base: bytes, patch: bytes, target_size: int) -> bytes:
    """Apply a BSDIFF40 patch after checking the size it declares against the header's.

    Raises:
        DeltaError: ``corrupt`` when the patch is malformed or declares another size.
    """
    if len(patch) < _BSDIFF_HEADER.size:
        raise DeltaError("the bsdiff4 patch is truncated", code="truncated")
    magic, control, diff, new_size = _BSDIFF_HEADER.unpack_from(patch)
    if magic != b"BSDIFF40" or control < 0 or diff < 0 or new_size != target_size:
        raise DeltaError("the bsdiff4 patch header does not match the delta header", code="corrupt")
    apply: Callable[[bytes, bytes], bytes] = bsdiff4.patch
    try:
        return apply(base, patch)
    except (ValueError, RuntimeError, OverflowError, OSError, EOFError) as exc:  # bz2 raises OSError
        msg = f"the bsdiff4 patch does not apply: {exc}"
        raise DeltaError(msg, code="corrupt") from None
