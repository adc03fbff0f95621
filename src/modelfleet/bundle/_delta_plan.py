"""The tensor codec's plan: which base spans it reads and where each target tensor goes.

A bundle is cut into tensor spans (ONNX initializer numbers) and the rest (tar
headers, manifest, signatures, graph, other files). The plan lists the base spans
the delta uses and, for each target span, the rest bytes before it, its base span,
its element kind, its mode and its payload length. It is a run of varints,
parsed here with bounds because it comes from an untrusted delta.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from modelfleet.bundle._container import MANIFEST_MEMBER, SIGNATURE_MEMBER, _next_member
from modelfleet.bundle._delta_format import ReadBuffer, varint
from modelfleet.bundle._delta_onnx import ElementKind, TensorSpan, element_kind, tensor_spans
from modelfleet.errors import BundleFormatError, DeltaError

__all__ = ["BaseSpan", "Plan", "TargetSpan", "bundle_spans", "kind_of", "parse_plan"]

MIN_SPAN_BYTES = 64  # smaller tensors cost less inside the rest stream than as a record of their own
_ITEMSIZES = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class BaseSpan:
    """A byte range of the base bundle that the delta reads as a tensor."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class TargetSpan:
    """One target tensor: rest bytes before it, its base span, how to diff it, payload size."""

    gap: int
    base: int
    kind: ElementKind
    mode: int
    payload: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Base spans, target spans in file order, and the rest bytes after the last span."""

    base_spans: tuple[BaseSpan, ...]
    target_spans: tuple[TargetSpan, ...]
    tail: int

    def to_bytes(self) -> bytes:
        """Serialize as varints (base offsets relative to the previous span's end)."""
        out = bytearray(varint(len(self.base_spans)))
        end = 0
        for span in self.base_spans:
            out += varint(span.offset - end) + varint(span.length)
            end = span.offset + span.length
        out += varint(len(self.target_spans))
        for t in self.target_spans:
            fields = (t.gap, t.base, t.kind.itemsize, int(t.kind.integer), t.mode, t.payload)
            out += b"".join(varint(value) for value in fields)
        return bytes(out + varint(self.tail))

    @property
    def rest_size(self) -> int:
        """Bytes of the target outside its tensor spans."""
        return sum(t.gap for t in self.target_spans) + self.tail


def _base_spans(buffer: ReadBuffer, base_size: int, max_spans: int) -> tuple[BaseSpan, ...]:
    count = buffer.varint()
    if count > max_spans:
        msg = f"delta plan lists {count} base tensors; the limit is {max_spans}"
        raise DeltaError(msg, code="too_large")
    spans, end = [], 0
    for _ in range(count):
        offset = end + buffer.varint()
        length = buffer.varint()
        end = offset + length
        if end > base_size:
            raise DeltaError("delta plan reads past the end of the base bundle", code="corrupt")
        spans.append(BaseSpan(offset, length))
    return tuple(spans)


def _target_span(buffer: ReadBuffer, base_spans: tuple[BaseSpan, ...]) -> TargetSpan:
    gap, base, itemsize, integer, mode, payload = (buffer.varint() for _ in range(6))
    if base >= len(base_spans) or itemsize not in _ITEMSIZES or integer > 1:
        raise DeltaError("delta plan names a base tensor or element kind that does not exist", code="corrupt")
    if base_spans[base].length % itemsize:
        raise DeltaError("delta plan's element size does not divide its tensor", code="corrupt")
    return TargetSpan(gap, base, ElementKind(itemsize, bool(integer)), mode, payload)


def parse_plan(data: bytes, base_size: int, target_size: int, max_spans: int) -> Plan:
    """Parse and bound a plan: spans inside the base, the target's length adding up exactly.

    Raises:
        DeltaError: ``corrupt``, ``truncated`` or ``too_large``.
    """
    buffer = ReadBuffer(data, "the delta plan")
    base_spans = _base_spans(buffer, base_size, max_spans)
    count = buffer.varint()
    if count > max_spans:
        msg = f"delta plan lists {count} target tensors; the limit is {max_spans}"
        raise DeltaError(msg, code="too_large")
    targets = tuple(_target_span(buffer, base_spans) for _ in range(count))
    plan = Plan(base_spans, targets, buffer.varint())
    if buffer.remaining:
        raise DeltaError("delta plan has bytes after its end", code="corrupt")
    covered = plan.rest_size + sum(base_spans[t.base].length for t in targets)
    if covered != target_size:
        msg = f"delta plan rebuilds {covered} bytes but the header promises {target_size}"
        raise DeltaError(msg, code="corrupt")
    return plan


def bundle_spans(bundle: bytes) -> dict[str, list[TensorSpan]]:
    """Return the tensor spans of each ONNX payload member, offsets within the bundle."""
    stream = io.BytesIO(bundle)
    spans: dict[str, list[TensorSpan]] = {}
    try:
        while (member := _next_member(stream)) is not None:
            start = stream.tell()
            if member.name not in (MANIFEST_MEMBER, SIGNATURE_MEMBER) and member.name.endswith(".onnx"):
                view = memoryview(bundle)[start : start + member.size]
                found = [s for s in tensor_spans(view, start) if s.length >= MIN_SPAN_BYTES]
                spans[member.name] = found
            stream.seek(start + member.size + (-member.size % 512))
    except BundleFormatError:
        return spans  # not a bundle the walker understands past here: the rest stream carries it
    return spans


def kind_of(span: TensorSpan) -> ElementKind:
    """Return the element kind used to diff a span."""
    return element_kind(span.dtype, span.length)
