"""The ``.mfd`` delta header (ADR 0009): magic, format version, base and target identity, codec.

Layout: 8 bytes of magic, a big-endian ``u16`` format version, a ``u16`` length,
then that many bytes of canonical JSON ``{"base": {"sha256", "size"}, "codec",
"target": {"sha256", "size"}}``; the codec's body follows. The header is parsed
with bounds and without trust: it only tells the applier which base to check and
which bundle the result must hash to.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelfleet.errors import DeltaError

__all__ = [
    "DELTA_FORMAT_VERSION",
    "DELTA_MAGIC",
    "DeltaCodec",
    "DeltaHeader",
    "ReadBuffer",
    "read_delta_header",
    "varint",
]

DELTA_MAGIC = b"\x89MFD\r\n\x1a\n"
DELTA_FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sHH")
_MAX_HEADER_JSON = 4096
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
        """Serialize magic, version, length and canonical JSON."""
        document = {
            "base": {"sha256": self.base_sha256, "size": self.base_size},
            "codec": self.codec.value,
            "target": {"sha256": self.target_sha256, "size": self.target_size},
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")
        return _PREFIX.pack(DELTA_MAGIC, self.format_version, len(text)) + text

    @property
    def length(self) -> int:
        """Bytes the header takes at the start of the delta file."""
        return len(self.to_bytes())


def _bad(message: str, code: str = "bad_header") -> DeltaError:
    return DeltaError(message, code=code)


def _identity(document: dict[str, object], key: str) -> tuple[str, int]:
    part = document.get(key)
    if not isinstance(part, dict):
        msg = f"delta header has no {key!r} object"
        raise _bad(msg)
    sha, size = part.get("sha256"), part.get("size")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        msg = f"delta header {key}.sha256 is not 64 lowercase hex digits"
        raise _bad(msg)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        msg = f"delta header {key}.size is not a non-negative integer"
        raise _bad(msg)
    return sha, size


def parse_header(data: bytes) -> DeltaHeader:
    """Parse the header at the start of ``data`` (which may hold more).

    Raises:
        DeltaError: ``bad_header``, ``unsupported_version`` or ``truncated``.
    """
    if len(data) < _PREFIX.size:
        raise _bad("delta is truncated: it ends inside the header", "truncated")
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != DELTA_MAGIC:
        raise _bad("not a modelfleet delta (.mfd): the magic bytes differ")
    if version != DELTA_FORMAT_VERSION:
        msg = f"delta format version {version} is not supported (this reader knows {DELTA_FORMAT_VERSION})"
        raise _bad(msg, "unsupported_version")
    if length > _MAX_HEADER_JSON:
        msg = f"delta header is {length} bytes; the limit is {_MAX_HEADER_JSON}"
        raise _bad(msg)
    text = data[_PREFIX.size : _PREFIX.size + length]
    if len(text) != length:
        raise _bad("delta is truncated: it ends inside the header", "truncated")
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad("delta header is not JSON") from None
    if not isinstance(document, dict):
        raise _bad("delta header is not a JSON object")
    try:
        codec = DeltaCodec(str(document.get("codec")))
    except ValueError:
        msg = f"delta codec {document.get('codec')!r} is unknown"
        raise _bad(msg) from None
    base_sha, base_size = _identity(document, "base")
    target_sha, target_size = _identity(document, "target")
    return DeltaHeader(base_sha, base_size, target_sha, target_size, codec, version)


def read_delta_header(source: Path | bytes | BinaryIO) -> DeltaHeader:
    """Read only the header of a delta: which base it needs and which bundle it rebuilds.

    The agent calls this before applying, to check that ``base_sha256`` is what it
    runs and ``target_sha256`` is the bundle the server offered.

    Raises:
        DeltaError: the header is malformed, truncated or of another format version.
    """
    limit = _PREFIX.size + _MAX_HEADER_JSON
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
