"""Where each ONNX initializer's numbers sit inside a serialized model, found by walking the protobuf.

The tensor codec diffs those byte spans and leaves every other byte of the file
(graph, names, field tags) to the generic rest stream, so the rebuilt model is
byte-exact by construction. Only ``raw_data`` and packed ``float_data`` /
``double_data`` are spans (their bytes are the little-endian numbers); anything
else, or anything this walker does not understand, simply stays in the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ElementKind", "TensorSpan", "element_kind", "tensor_spans"]

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_DTYPE, _T_FLOAT_DATA, _T_NAME, _T_RAW_DATA, _T_DOUBLE_DATA, _T_LOCATION = 1, 2, 4, 8, 9, 10, 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FLOAT, _DOUBLE = 1, 11
# ONNX TensorProto.DataType -> (bytes per element, True when integer arithmetic applies)
_KINDS: dict[int, tuple[int, bool]] = {
    1: (4, False),  # FLOAT
    2: (1, True),  # UINT8
    3: (1, True),  # INT8
    4: (2, True),  # UINT16
    5: (2, True),  # INT16
    6: (4, True),  # INT32
    7: (8, True),  # INT64
    9: (1, False),  # BOOL
    10: (2, False),  # FLOAT16
    11: (8, False),  # DOUBLE
    12: (4, True),  # UINT32
    13: (8, True),  # UINT64
    16: (2, False),  # BFLOAT16
    17: (1, False),  # FLOAT8E4M3FN
    18: (1, False),  # FLOAT8E4M3FNUZ
    19: (1, False),  # FLOAT8E5M2
    20: (1, False),  # FLOAT8E5M2FNUZ
}


@dataclass(frozen=True, slots=True)
class ElementKind:
    """How to take the difference of a tensor's elements: width and domain."""

    itemsize: int
    integer: bool  # wrapping subtraction when True, XOR of bit patterns when False


@dataclass(frozen=True, slots=True)
class TensorSpan:
    """One initializer's element bytes: absolute offset and length in the containing file."""

    name: str
    dims: tuple[int, ...]
    dtype: int
    offset: int
    length: int

    @property
    def key(self) -> tuple[str, tuple[int, ...], int]:
        """What must match between base and target: name, shape and dtype."""
        return (self.name, self.dims, self.dtype)


def element_kind(dtype: int, length: int) -> ElementKind:
    """Return the element kind of an ONNX dtype, or bytes under XOR when unknown or misaligned."""
    itemsize, integer = _KINDS.get(dtype, (1, False))
    if length % itemsize:
        return ElementKind(1, integer=False)
    return ElementKind(itemsize, integer)


class _MalformedError(Exception):
    """The bytes are not protobuf this walker understands; the caller keeps them as plain bytes."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:  # noqa: PLR2004 - ten 7-bit groups
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _MalformedError


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field, wire type, value or start, end)``; for LEN fields ``value`` is the start."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, pos
        elif wire == _LEN:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _MalformedError
            yield field, wire, pos, pos + size
            pos += size
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            yield field, wire, 0, pos
        else:
            raise _MalformedError
    if pos != end:
        raise _MalformedError


def _packed_dims(buf: memoryview, start: int, end: int) -> list[int]:
    dims, pos = [], start
    while pos < end:
        value, pos = _varint(buf, pos, end)
        dims.append(value)
    return dims


def _tensor(buf: memoryview, start: int, end: int, base: int) -> TensorSpan | None:
    dims: list[int] = []
    dtype, name, data, location = 0, "", [], 0
    for field, wire, value, stop in _fields(buf, start, end):
        if field == _T_DIMS:
            dims.extend(_packed_dims(buf, value, stop) if wire == _LEN else [value])
        elif field == _T_DTYPE and wire == _VARINT:
            dtype = value
        elif field == _T_NAME and wire == _LEN:
            name = bytes(buf[value:stop]).decode("utf-8", "replace")
        elif field == _T_LOCATION and wire == _VARINT:
            location = value
        elif field in (_T_RAW_DATA, _T_FLOAT_DATA, _T_DOUBLE_DATA):
            data.append((field, wire, value, stop))
    if location or len(data) != 1:
        return None
    field, wire, value, stop = data[0]
    packed_float = field == _T_FLOAT_DATA and dtype == _FLOAT
    packed_double = field == _T_DOUBLE_DATA and dtype == _DOUBLE
    if wire != _LEN or not (field == _T_RAW_DATA or packed_float or packed_double):
        return None
    return TensorSpan(name, tuple(dims), dtype, base + value, stop - value)


def tensor_spans(model: bytes | memoryview, base: int = 0) -> list[TensorSpan]:
    """Return the initializer element spans of a serialized ONNX model, in file order.

    ``base`` is added to every offset (the model's position inside a bundle).
    Bytes that are not a model this walker understands give an empty list.
    """
    buf = memoryview(model)
    spans: list[TensorSpan] = []
    try:
        for field, wire, start, end in _fields(buf, 0, len(buf)):
            if field != _MODEL_GRAPH or wire != _LEN:
                continue
            for g_field, g_wire, t_start, t_end in _fields(buf, start, end):
                if g_field == _GRAPH_INITIALIZER and g_wire == _LEN:
                    span = _tensor(buf, t_start, t_end, base)
                    if span is not None:
                        spans.append(span)
    except _MalformedError:
        return []
    return spans
