"""Apply a delta to the installed bundle: check the base, rebuild tensor by tensor, verify, rename.

The delta is untrusted. Its header says which base it needs (checked by sha256
before any work) and which bundle it rebuilds (checked by sha256 and size after);
every length inside is bounded by those sizes. The output goes to a temp file
beside ``out`` and is renamed into place only when the hash matches, so a refused
delta leaves nothing behind. The tensor codec holds one tensor at a time plus the
small rest stream; the generic codecs hold the base in memory (ADR 0009).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from modelfleet.bundle._delta_format import DeltaCodec, DeltaHeader, ReadBuffer, read_delta_header
from modelfleet.bundle._delta_generic import bounded_decompress, bsdiff4_apply, expect_end, prefix_reader, read_exactly
from modelfleet.bundle._delta_plan import Plan, parse_plan
from modelfleet.bundle._delta_tensor import decode_tensor
from modelfleet.errors import DeltaError

__all__ = ["DeltaLimits", "apply"]

_GIB = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeltaLimits:
    """Bounds ``apply`` enforces on an untrusted delta.

    Attributes:
        max_target_bytes: largest bundle a delta may rebuild.
        max_plan_bytes: largest tensor plan (varints) accepted.
        max_tensors: most tensor spans in one plan.
        chunk_bytes: read/hash/write unit for streamed parts.
    """

    max_target_bytes: int = 16 * _GIB
    max_plan_bytes: int = 16 * 1024 * 1024
    max_tensors: int = 100_000
    chunk_bytes: int = 1024 * 1024


class _Sink:
    """The output file, hashed as it is written; refuses to grow past the promised size."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size
        self.written = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        if self.written > self.size:
            raise DeltaError("the delta rebuilds more bytes than its header promises", code="corrupt")
        self.digest.update(data)
        self.handle.write(data)


@contextmanager
def _opened(source: Path | bytes) -> Iterator[BinaryIO]:
    if isinstance(source, Path):
        with source.open("rb") as handle:
            yield handle
    else:
        yield io.BytesIO(source)


def _read_at(stream: BinaryIO, offset: int, size: int, what: str) -> bytes:
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        msg = f"delta is truncated: it ends inside {what}"
        raise DeltaError(msg, code="truncated")
    return data


def _size(stream: BinaryIO) -> int:
    return stream.seek(0, os.SEEK_END)


def _check_base(base: BinaryIO, header: DeltaHeader, chunk_bytes: int) -> None:
    size = _size(base)
    base.seek(0)
    digest = hashlib.sha256()
    while chunk := base.read(chunk_bytes):
        digest.update(chunk)
    if size != header.base_size or digest.hexdigest() != header.base_sha256:
        msg = (
            f"this delta applies to the bundle with sha256 {header.base_sha256[:16]}… ({header.base_size} bytes), "
            f"not to this one ({digest.hexdigest()[:16]}…, {size} bytes)"
        )
        raise DeltaError(msg, code="wrong_base")


class _Body:
    """The delta body after the header, read by offset so large payloads stay on disk."""

    def __init__(self, stream: BinaryIO, start: int) -> None:
        self.stream = stream
        self.position = start
        self.end = _size(stream)

    def varint(self) -> int:
        """Read a varint at the current position."""
        window = _read_at(self.stream, self.position, min(10, self.end - self.position), "a length")
        buffer = ReadBuffer(window, "a length")
        value = buffer.varint()
        self.position += len(window) - buffer.remaining
        return value

    def take(self, size: int, what: str) -> bytes:
        """Read the next ``size`` bytes."""
        if size > self.end - self.position:
            msg = f"delta is truncated: it ends inside {what}"
            raise DeltaError(msg, code="truncated")
        data = _read_at(self.stream, self.position, size, what)
        self.position += size
        return data


def _rest_of_base(base: BinaryIO, plan: Plan) -> bytes:
    parts, end = [], 0
    for span in plan.base_spans:
        parts.append(_read_at(base, end, span.offset - end, "the base"))
        end = span.offset + span.length
    parts.append(_read_at(base, end, _size(base) - end, "the base"))
    return b"".join(parts)


def _apply_tensor(base: BinaryIO, body: _Body, header: DeltaHeader, sink: _Sink, limits: DeltaLimits) -> None:
    plan_size = body.varint()
    if plan_size > limits.max_plan_bytes:
        msg = f"delta plan is {plan_size} bytes; the limit is {limits.max_plan_bytes}"
        raise DeltaError(msg, code="too_large")
    plan_frame = body.take(body.varint(), "the plan")
    plan_bytes = bounded_decompress(plan_frame, plan_size, "the delta plan")
    plan = parse_plan(plan_bytes, header.base_size, header.target_size, limits.max_tensors)
    rest_frame = body.take(body.varint(), "the rest stream")
    rest = prefix_reader(_rest_of_base(base, plan), rest_frame, plan.rest_size)
    for span in plan.target_spans:
        _copy_rest(rest, span.gap, sink, limits.chunk_bytes)
        old = plan.base_spans[span.base]
        payload = body.take(span.payload, "a tensor payload")
        old_bytes = _read_at(base, old.offset, old.length, "the base")
        sink.write(decode_tensor(old_bytes, span.mode, payload, span.kind, header.format_version))
    _copy_rest(rest, plan.tail, sink, limits.chunk_bytes)
    expect_end(rest, "the rest stream")
    if body.position != body.end:
        raise DeltaError("the delta has bytes after its last tensor", code="corrupt")


def _copy_rest(rest: zstandard.ZstdDecompressionReader, size: int, sink: _Sink, chunk_bytes: int) -> None:
    while size:
        chunk = read_exactly(rest, min(size, chunk_bytes), "the rest stream")
        sink.write(chunk)
        size -= len(chunk)


def _apply_zstd(base: BinaryIO, body: _Body, header: DeltaHeader, sink: _Sink, limits: DeltaLimits) -> None:
    base.seek(0)
    frame = body.take(body.end - body.position, "the zstd frame")
    reader = prefix_reader(base.read(), frame, header.target_size)
    _copy_rest(reader, header.target_size, sink, limits.chunk_bytes)
    expect_end(reader, "the zstd frame")


def _apply_bsdiff4(base: BinaryIO, body: _Body, header: DeltaHeader, sink: _Sink, _limits: DeltaLimits) -> None:
    base.seek(0)
    sink.write(bsdiff4_apply(base.read(), body.take(body.end - body.position, "the patch"), header.target_size))


_APPLIERS = {DeltaCodec.TENSOR: _apply_tensor, DeltaCodec.ZSTD: _apply_zstd, DeltaCodec.BSDIFF4: _apply_bsdiff4}


def _rebuild(base: BinaryIO, delta: BinaryIO, header: DeltaHeader, handle: BinaryIO, limits: DeltaLimits) -> None:
    sink = _Sink(handle, header.target_size)
    try:
        _APPLIERS[header.codec](base, _Body(delta, header.length), header, sink, limits)
    except (ValueError, zstandard.ZstdError) as exc:
        msg = f"the delta is corrupt: {exc}"
        raise DeltaError(msg, code="corrupt") from None
    if sink.written != header.target_size or sink.digest.hexdigest() != header.target_sha256:
        msg = (
            f"the rebuilt bundle ({sink.written} bytes, sha256 {sink.digest.hexdigest()[:16]}…) is not the "
            f"target the delta names ({header.target_size} bytes, {header.target_sha256[:16]}…)"
        )
        raise DeltaError(msg, code="target_mismatch")


def apply(base: Path | bytes, delta: Path | bytes, out: Path, *, limits: DeltaLimits | None = None) -> DeltaHeader:
    """Rebuild the target bundle from ``base`` and ``delta`` into ``out``, verified and atomic.

    ``out`` holds exactly the bundle whose sha256 the header names, or does not
    change. The caller still verifies the bundle's signatures (``read_bundle``)
    and that the header's target is the bundle it was offered.

    Raises:
        DeltaError: ``bad_header``, ``unsupported_version``, ``too_large``, ``wrong_base``,
            ``truncated``, ``corrupt`` or ``target_mismatch``; ``out`` is untouched.
    """
    limits = limits or DeltaLimits()
    with _opened(delta) as delta_stream:
        header = read_delta_header(delta_stream)
        if header.target_size > limits.max_target_bytes:
            msg = f"the delta rebuilds {header.target_size} bytes; the limit is {limits.max_target_bytes}"
            raise DeltaError(msg, code="too_large")
        with _opened(base) as base_stream:
            _check_base(base_stream, header, limits.chunk_bytes)
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
            temp = Path(temp_name)
            try:
                with os.fdopen(fd, "wb") as handle:
                    _rebuild(base_stream, delta_stream, header, handle, limits)
                    handle.flush()
                    os.fsync(handle.fileno())
                temp.replace(out)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
    return header
