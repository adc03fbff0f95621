"""The ``.mfd`` delta header (ADR 0009): magic, format version, codec, base and target identity.

Layout: 4 bytes of magic, one byte format version, one byte codec, the base
bundle's sha256 (32 raw bytes) and size (LEB128 varint), the target bundle's
sha256 and size; the codec's body follows. About 75 bytes, so a header never
decides whether a small delta beats a generic one. It is parsed with bounds and
without trust: it only tells the applier which base to check and which bundle
the result must hash to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelfleet.errors import DeltaError

__all__ = [
    "DELTA_FORMAT_VERSION",
    "DELTA_MAGIC",
    "READABLE_VERSIONS",
    "DeltaCodec",
    "DeltaHeader",
    "ReadBuffer",
    "read_delta_header",
    "varint",
    "written_version",
]

DELTA_MAGIC = b"\x89MFD"
DELTA_FORMAT_VERSION = 2  # the newest this writer knows; 2 changed only the tensor codec's payloads
READABLE_VERSIONS = (1, 2)
_MAX_HEADER = len(DELTA_MAGIC) + 2 + 2 * (32 + 10)


class DeltaCodec(enum.StrEnum):
    """How the body rebuilds the target bundle from the base."""

    TENSOR = "tensor"  # ONNX initializers diffed per tensor, the rest by zstd with the base's rest as prefix
    ZSTD = "zstd"  # the whole target compressed with zstd, the whole base as raw-content dictionary
    BSDIFF4 = "bsdiff4"  # a BSDIFF40 patch of the whole file


@dataclass(frozen=True, slots=True)
class DeltaHeader:
    """What a delta claims: the base it applies to, the bundle it rebuilds, and the codec."""

    base_sha256: str
    base_size: int
    target_sha256: str
    target_size: int
    codec: DeltaCodec
    format_version: int = DELTA_FORMAT_VERSION

    def to_bytes(self) -> bytes:
        """Serialize magic, version, codec, then base and target sha256 and size."""
        if self.format_version not in READABLE_VERSIONS:
            msg = f"delta format version {self.format_version} cannot be written; known: {READABLE_VERSIONS}"
            raise ValueError(msg)
        return b"".join(
            (
                DELTA_MAGIC,
                bytes([self.format_version, _CODEC_IDS[self.codec]]),
                bytes.fromhex(self.base_sha256),
                varint(self.base_size),
                bytes.fromhex(self.target_sha256),
                varint(self.target_size),
            )
        )

    @property
    def length(self) -> int:
        """Bytes the header takes at the start of the delta file."""
        return len(self.to_bytes())


def written_version(codec: DeltaCodec | str, format_version: int) -> int:
    """The header version of a delta encoded with ``format_version``: only the tensor codec's body changed in 2.

    Generic deltas stay version 1 whatever was asked (ADR 0009), so every reader applies them;
    the server checks this before it offers a built delta to a device (ADR 0010).
    """
    return format_version if codec == DeltaCodec.TENSOR else 1


_CODEC_IDS = {DeltaCodec.TENSOR: 1, DeltaCodec.ZSTD: 2, DeltaCodec.BSDIFF4: 3}
_CODECS = {number: codec for codec, number in _CODEC_IDS.items()}


def _bad(message: str, code: str = "bad_header") -> DeltaError:
    return DeltaError(message, code=code)


def parse_header(data: bytes) -> DeltaHeader:
    """Parse the header at the start of ``data`` (which may hold more).

    Raises:
        DeltaError: ``bad_header``, ``unsupported_version`` or ``truncated``.
    """
    if len(data) < len(DELTA_MAGIC) + 2:
        raise _bad("delta is truncated: it ends inside the header", "truncated")
    if data[: len(DELTA_MAGIC)] != DELTA_MAGIC:
        raise _bad("not a modelfleet delta (.mfd): the magic bytes differ")
    version, codec_id = data[len(DELTA_MAGIC)], data[len(DELTA_MAGIC) + 1]
    if version not in READABLE_VERSIONS:
        known = ", ".join(map(str, READABLE_VERSIONS))
        msg = f"delta format version {version} is not supported (this reader knows {known})"
        raise _bad(msg, "unsupported_version")
    if codec_id not in _CODECS:
        msg = f"delta codec {codec_id} is unknown"
        raise _bad(msg)
    buffer = ReadBuffer(data[len(DELTA_MAGIC) + 2 :], "the delta header")
    base_sha, base_size = bytes(buffer.take(32)).hex(), buffer.varint()
    target_sha, target_size = bytes(buffer.take(32)).hex(), buffer.varint()
    return DeltaHeader(base_sha, base_size, target_sha, target_size, _CODECS[codec_id], version)


def read_delta_header(source: Path | bytes | BinaryIO) -> DeltaHeader:
    """Read only the header of a delta: which base it needs and which bundle it rebuilds.

    The agent calls this before applying, to check that ``base_sha256`` is what it
    runs and ``target_sha256`` is the bundle the server offered.

    Raises:
        DeltaError: the header is malformed, truncated or of another format version.
    """
    limit = _MAX_HEADER
    if isinstance(source, bytes):
        return parse_header(source[:limit])
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return parse_header(handle.read(limit))
    return parse_header(source.read(limit))


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a LEB128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ReadBuffer:
    """Bounded reads from untrusted bytes; every overrun is a ``truncated`` DeltaError."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def take(self, size: int) -> memoryview:
        """Return the next ``size`` bytes."""
        if size < 0 or size > self.remaining:
            msg = f"delta is truncated: {self._what} ends early"
            raise DeltaError(msg, code="truncated")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def varint(self) -> int:
        """Read one LEB128 varint (at most 10 bytes)."""
        value = shift = 0
        for _ in range(10):
            (byte,) = self.take(1)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        msg = f"{self._what} holds a varint longer than 10 bytes"
        raise DeltaError(msg, code="corrupt")
