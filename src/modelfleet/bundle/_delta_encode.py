"""Build a delta: every allowed codec is a candidate, the smallest one that verifies wins.

Encoding runs on the server (or ``modelfleet bundle diff``) with both bundles in
memory; applying (``_delta_apply``) is what must stay small on a device.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelfleet.bundle._delta_format import (
    DELTA_FORMAT_VERSION,
    READABLE_VERSIONS,
    DeltaCodec,
    DeltaHeader,
    varint,
    written_version,
)
from modelfleet.bundle._delta_generic import bsdiff4_encode, zstd_prefix_encode
from modelfleet.bundle._delta_onnx import TensorSpan
from modelfleet.bundle._delta_plan import BaseSpan, Plan, TargetSpan, bundle_spans, kind_of
from modelfleet.bundle._delta_tensor import encode_tensor
from modelfleet.errors import DeltaError

__all__ = ["DeltaOptions", "EncodedDelta", "encode"]

logger = logging.getLogger(__name__)
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeltaOptions:
    """What ``encode`` may spend.

    Attributes:
        codecs: the candidates allowed; the smallest delta among them wins.
        level: zstd level of the generic codec and of the tensor codec's rest stream.
        tensor_level: zstd level of tensor payloads (byte planes are mostly entropy-bound;
            higher levels cost time for little gain).
        generic_max_bytes: above this target size the generic candidates run only when
            the tensor codec does not apply (their time and memory grow with the file).
        bsdiff4_max_bytes: bsdiff4 is skipped above this target size (it needs about 17x
            the base in memory and minutes on tens of MB).
        verify: apply each winning candidate to a temp file and check the hash before
            returning it; a candidate that does not rebuild the target is dropped.
        format_version: the tensor codec's payload layout (2: a coder per byte plane;
            1: for readers that know only format 1). Generic deltas are always written
            as format 1, which every reader applies.
    """

    codecs: tuple[DeltaCodec, ...] = (DeltaCodec.TENSOR, DeltaCodec.ZSTD, DeltaCodec.BSDIFF4)
    level: int = 19
    tensor_level: int = 9
    generic_max_bytes: int = 8 * _MIB
    bsdiff4_max_bytes: int = 8 * _MIB
    verify: bool = True
    format_version: int = DELTA_FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class EncodedDelta:
    """A delta file's bytes, its header, and the size each candidate codec reached."""

    data: bytes
    header: DeltaHeader
    sizes: Mapping[DeltaCodec, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def codec(self) -> DeltaCodec:
        """The codec that won."""
        return self.header.codec


def _load(source: bytes | Path) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


def _match(
    base: dict[str, list[TensorSpan]], target: dict[str, list[TensorSpan]]
) -> list[tuple[TensorSpan, TensorSpan]]:
    """Pair target tensors with base tensors of the same member, name, shape, dtype and length."""
    anywhere: dict[tuple[str, tuple[int, ...], int], TensorSpan] = {}
    for spans in base.values():
        for span in spans:
            anywhere.setdefault(span.key, span)
    pairs = []
    for member, spans in target.items():
        same_member = {span.key: span for span in base.get(member, [])}
        for span in spans:
            old = same_member.get(span.key) or anywhere.get(span.key)
            if old is not None and old.length == span.length:
                pairs.append((old, span))
    return sorted(pairs, key=lambda pair: pair[1].offset)


def _cut(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """Return ``data`` without the given sorted, disjoint ``(offset, length)`` spans."""
    parts, end = [], 0
    for offset, length in spans:
        parts.append(data[end:offset])
        end = offset + length
    parts.append(data[end:])
    return b"".join(parts)


def _tensor_body(base: bytes, target: bytes, options: DeltaOptions) -> bytes | None:
    pairs = _match(bundle_spans(base), bundle_spans(target))
    if not pairs:
        return None
    used = sorted({(old.offset, old.length) for old, _ in pairs})
    index = {span: i for i, span in enumerate(used)}
    records, payloads, end = [], [], 0
    for old, new in pairs:
        kind = kind_of(new)
        mode, payload = encode_tensor(
            memoryview(base)[old.offset : old.offset + old.length],
            memoryview(target)[new.offset : new.offset + new.length],
            kind,
            options.tensor_level,
            options.format_version,
        )
        records.append(TargetSpan(new.offset - end, index[old.offset, old.length], kind, mode, len(payload)))
        payloads.append(payload)
        end = new.offset + new.length
    plan = Plan(tuple(BaseSpan(o, n) for o, n in used), tuple(records), len(target) - end)
    rest_base = _cut(base, used)
    rest_target = _cut(target, [(new.offset, new.length) for _, new in pairs])
    plan_bytes = plan.to_bytes()
    plan_frame = zstd_prefix_encode(b"", plan_bytes, options.level)
    rest_frame = zstd_prefix_encode(rest_base, rest_target, options.level)
    head = varint(len(plan_bytes)) + varint(len(plan_frame)) + plan_frame + varint(len(rest_frame)) + rest_frame
    return head + b"".join(payloads)


def _candidates(base: bytes, target: bytes, options: DeltaOptions) -> dict[DeltaCodec, bytes]:
    bodies: dict[DeltaCodec, bytes] = {}
    if DeltaCodec.TENSOR in options.codecs and (body := _tensor_body(base, target, options)) is not None:
        bodies[DeltaCodec.TENSOR] = body
    generic = not bodies or len(target) <= options.generic_max_bytes
    if generic and DeltaCodec.ZSTD in options.codecs:
        bodies[DeltaCodec.ZSTD] = zstd_prefix_encode(base, target, options.level)
    if generic and DeltaCodec.BSDIFF4 in options.codecs and len(target) <= options.bsdiff4_max_bytes:
        bodies[DeltaCodec.BSDIFF4] = bsdiff4_encode(base, target)
    return bodies


def _verifies(base: bytes, data: bytes) -> bool:
    from modelfleet.bundle._delta_apply import apply  # noqa: PLC0415 - apply imports nothing of encode; avoid a cycle

    with tempfile.TemporaryDirectory(prefix="modelfleet-delta-") as directory:
        try:
            apply(base, data, Path(directory) / "target.mfb")
        except DeltaError as error:
            logger.warning("delta candidate does not rebuild its target: %s [%s]", error.message, error.code)
            return False
    return True


def encode(base: bytes | Path, target: bytes | Path, *, options: DeltaOptions | None = None) -> EncodedDelta:
    """Encode the delta that rebuilds ``target`` from ``base``: the smallest verified candidate.

    Raises:
        ValueError: no codec is allowed, or no candidate rebuilt the target (an encoder bug).
    """
    options = options or DeltaOptions()
    if not options.codecs:
        raise ValueError("DeltaOptions.codecs is empty")
    if options.format_version not in READABLE_VERSIONS:
        msg = f"DeltaOptions.format_version {options.format_version} is not one of {READABLE_VERSIONS}"
        raise ValueError(msg)
    started = time.perf_counter()
    old, new = _load(base), _load(target)
    bodies = _candidates(old, new, options)
    if not bodies:
        bodies[DeltaCodec.ZSTD] = zstd_prefix_encode(old, new, options.level)
    identity = (hashlib.sha256(old).hexdigest(), len(old), hashlib.sha256(new).hexdigest(), len(new))
    headers = {codec: DeltaHeader(*identity, codec, written_version(codec, options.format_version)) for codec in bodies}
    files = {codec: headers[codec].to_bytes() + body for codec, body in bodies.items()}
    sizes = {codec: len(data) for codec, data in files.items()}
    for codec in sorted(files, key=lambda c: sizes[c]):
        if not options.verify or _verifies(old, files[codec]):
            return EncodedDelta(files[codec], headers[codec], sizes, time.perf_counter() - started)
    msg = f"no delta candidate rebuilt the target ({', '.join(sizes)}); this is a bug in the encoder"
    raise ValueError(msg)
