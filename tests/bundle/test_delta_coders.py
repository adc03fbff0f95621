"""Format version 2 of the tensor codec (ADR 0009): each coder and layout round-trips exactly; bad bytes are refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelfleet.bundle._delta_format import ReadBuffer, varint
from modelfleet.bundle._delta_onnx import ElementKind
from modelfleet.bundle._delta_planes import pack_plane
from modelfleet.bundle._delta_positions import gap_varints, positions_from_varints
from modelfleet.bundle._delta_streams import StreamCoder, decode_stream, encode_stream
from modelfleet.bundle._delta_tensor import TensorMode, decode_tensor, encode_tensor
from modelfleet.bundle.delta import DeltaCodec, DeltaOptions, apply, encode, read_delta_header
from modelfleet.errors import DeltaError
from modelfleet.sim._model_pairs import BundlePair, bundle_pair

INT8, FP32 = ElementKind(1, integer=True), ElementKind(4, integer=False)


def rng(seed: int = 8) -> np.random.Generator:
    return np.random.default_rng(seed)


def skewed(size: int) -> bytes:
    """An INT8 fine-tune's differences (mostly 0, some 1 and 2) packed four to a byte, as planes are coded."""
    r = rng()
    return pack_plane(np.where(r.random(size) < 0.8, 0, r.integers(1, 3, size)).astype(np.uint8))


def spread(size: int) -> bytes:
    """About 6.4 bits per byte (new INT8 values): above lzma's threshold, Huffman is within 1%."""
    return np.clip(np.rint(rng().normal(0, 20, size)), -127, 127).astype(np.int8).tobytes()


def noise(size: int) -> bytes:
    return rng().integers(0, 256, size, dtype=np.uint8).tobytes()


STREAMS: dict[str, tuple[bytes, set[StreamCoder]]] = {
    "random mantissa bytes are stored": (noise(50_000), {StreamCoder.STORED}),
    "a skewed plane goes through lzma": (skewed(200_000), {StreamCoder.LZMA}),
    "a large high-entropy plane goes through zstd": (spread(400_000), {StreamCoder.ZSTD}),
    "repeats that order-0 entropy misses are still found": (bytes(range(256)) * 2000, {StreamCoder.ZSTD}),
}


@pytest.mark.parametrize(("raw", "coders"), STREAMS.values(), ids=STREAMS.keys())
def test_each_coder_is_chosen_where_it_is_smallest_and_round_trips_exactly(raw, coders):
    coded = encode_stream(raw, level=9)
    assert coded[0] in coders
    coder = StreamCoder(coded[0])
    buffer = ReadBuffer(coded, "a stream")
    assert decode_stream(buffer, len(raw), "a stream") == raw
    assert buffer.remaining == 0
    if coder is not StreamCoder.STORED:
        assert len(coded) < 0.9 * len(raw)


def test_lzma_codes_a_skewed_plane_close_to_its_entropy():
    raw = np.frombuffer(skewed(400_000), dtype=np.uint8)
    counts = np.bincount(raw)
    entropy = float(-(counts[counts > 0] * np.log2(counts[counts > 0] / raw.size)).sum() / 8)
    assert len(encode_stream(raw.tobytes(), level=9)) < 1.05 * entropy


# ------------------------------------------------------------------ stream refusals


def stream(coder: StreamCoder, raw: bytes) -> bytes:
    """An encoded stream forced to one coder, for mangling."""
    coded = encode_stream(raw, level=9)
    assert coded[0] == coder
    return coded


def with_size(coded: bytes, size: int) -> bytes:
    """The same stream declaring another decoded length."""
    buffer = ReadBuffer(coded, "s")
    buffer.take(1)
    buffer.varint()
    length = buffer.varint()
    return coded[:1] + varint(size) + varint(length) + bytes(buffer.take(length))


LZMA_RAW, ZSTD_RAW, STORED_RAW = skewed(80_000), spread(400_000), noise(3000)
N = len(LZMA_RAW)


def flipped(coded: bytes, start: int) -> bytes:
    return coded[:start] + bytes(b ^ 0xA5 for b in coded[start : start + 40]) + coded[start + 40 :]


BAD_STREAMS: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "an unknown coder": (lambda: b"\x07" + stream(StreamCoder.LZMA, LZMA_RAW)[1:], N, "corrupt"),
    "a size beyond the plane's bound": (lambda: stream(StreamCoder.LZMA, LZMA_RAW), N - 1, "corrupt"),
    "lzma bytes flipped": (lambda: flipped(stream(StreamCoder.LZMA, LZMA_RAW), 40), N, "corrupt"),
    "lzma decoding to fewer bytes than declared": (
        lambda: with_size(stream(StreamCoder.LZMA, LZMA_RAW), N + 1),
        2 * N,
        "corrupt",
    ),
    "lzma decoding to more bytes than declared": (
        lambda: with_size(stream(StreamCoder.LZMA, LZMA_RAW), N - 1),
        2 * N,
        "corrupt",
    ),
    "zstd bytes flipped": (lambda: flipped(stream(StreamCoder.ZSTD, ZSTD_RAW), 100), len(ZSTD_RAW), "corrupt"),
    "stored lengths that differ": (lambda: with_size(stream(StreamCoder.STORED, STORED_RAW), 2999), 3000, "corrupt"),
    "a cut stream": (lambda: stream(StreamCoder.LZMA, LZMA_RAW)[:-10], N, "truncated"),
}


@pytest.mark.parametrize(("make", "most", "code"), BAD_STREAMS.values(), ids=BAD_STREAMS.keys())
def test_a_bad_stream_is_refused_by_name(make, most, code):
    with pytest.raises(DeltaError) as caught:
        decode_stream(ReadBuffer(make(), "a stream"), most, "a stream")
    assert caught.value.code == code


# ------------------------------------------------------------------ positions


def test_gap_varints_round_trip_gaps_of_every_length():
    gaps = np.array([0, 0, 127, 128, 16_383, 16_384, 2_097_152, (1 << 31) + 5, 3], dtype=np.int64)
    positions = np.cumsum(gaps + 1) - 1
    data = gap_varints(positions)
    assert data.size == 1 + 1 + 1 + 2 + 2 + 3 + 4 + 5 + 1
    assert np.array_equal(positions_from_varints(data, gaps.size, int(positions[-1]) + 1), positions)


BAD_GAPS: dict[str, tuple[list[int], int, int]] = {
    "fewer varints than changes": ([3, 4], 3, 100),
    "a varint that does not end": ([3, 0x84], 2, 100),
    "a six-byte varint": ([0x80] * 5 + [1], 1, 1 << 40),
    "a position past the end": ([3, 96], 2, 100),
    "a gap larger than the tensor": ([0xFF, 0xFF, 0xFF, 0xFF, 0x0F], 1, 1000),
}


@pytest.mark.parametrize(("data", "changed", "count"), BAD_GAPS.values(), ids=BAD_GAPS.keys())
def test_bad_gap_varints_are_refused(data, changed, count):
    with pytest.raises(DeltaError) as caught:
        positions_from_varints(np.array(data, dtype=np.uint8), changed, count)
    assert caught.value.code == "corrupt"


# ------------------------------------------------------------------ tensors, both versions


def changed_tensor(kind: ElementKind, change: str, size: int = 20_000) -> tuple[bytes, bytes]:
    r = rng(size)
    if kind.integer:
        old = r.integers(-127, 128, size).astype(np.int8)
        if change == "fine-tune":
            new = np.clip(old + r.integers(-1, 2, size) * (r.random(size) < 0.7), -127, 127).astype(np.int8)
        else:
            new = np.where(r.random(size) < 0.05, r.integers(-127, 128, size), old).astype(np.int8)
        return old.tobytes(), new.tobytes()
    old32 = r.normal(0, 0.05, size).astype(np.float32)
    if change == "fine-tune":
        new32 = (old32 + r.normal(0, 0.0005, size)).astype(np.float32)
    else:
        new32 = np.where(r.random(size) < 0.05, r.normal(0, 0.05, size), old32).astype(np.float32)
    return old32.tobytes(), new32.tobytes()


TENSORS = {
    "int8 fine-tune": (INT8, "fine-tune", {TensorMode.DENSE}),
    "int8 partial retrain": (INT8, "retrain", {TensorMode.SPARSE, TensorMode.SPARSE_VALUES}),
    "fp32 fine-tune": (FP32, "fine-tune", {TensorMode.DENSE}),
    "fp32 partial retrain": (FP32, "retrain", {TensorMode.SPARSE_VALUES}),
}


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("kind", "change", "modes"), TENSORS.values(), ids=TENSORS.keys())
def test_every_tensor_mode_round_trips_exactly_in_both_versions(kind, change, modes, version):
    old, new = changed_tensor(kind, change)
    mode, payload = encode_tensor(old, new, kind, 9, version)
    assert mode in modes
    assert decode_tensor(old, mode, payload, kind, version) == new


@pytest.mark.parametrize(("kind", "change", "modes"), TENSORS.values(), ids=TENSORS.keys())
def test_version_2_payloads_are_never_more_than_their_framing_above_version_1(kind, change, modes):
    old, new = changed_tensor(kind, change)
    version_1 = len(encode_tensor(old, new, kind, 9, 1)[1])
    version_2 = len(encode_tensor(old, new, kind, 9, 2)[1])
    assert version_2 <= version_1 + 8 * kind.itemsize
    if kind.itemsize > 1 or change == "retrain":  # planes of other statistics no longer share one Huffman table
        assert version_2 < 0.95 * version_1


@pytest.mark.parametrize(("kind", "change", "modes"), TENSORS.values(), ids=TENSORS.keys())
@pytest.mark.parametrize("cut", [0.0, 0.5, 0.99])
def test_a_cut_version_2_payload_is_refused(kind, change, modes, cut):
    old, new = changed_tensor(kind, change)
    mode, payload = encode_tensor(old, new, kind, 9, 2)
    with pytest.raises(DeltaError) as caught:
        decode_tensor(old, mode, payload[: int(len(payload) * cut)], kind, 2)
    assert caught.value.code in {"corrupt", "truncated"}


def test_a_version_2_payload_with_bytes_after_its_planes_is_refused():
    old, new = changed_tensor(FP32, "fine-tune")
    mode, payload = encode_tensor(old, new, FP32, 9, 2)
    with pytest.raises(DeltaError) as caught:
        decode_tensor(old, mode, payload + b"\x00", FP32, 2)
    assert caught.value.code == "corrupt"


def test_a_sparse_payload_claiming_more_changes_than_elements_is_refused():
    old, new = changed_tensor(INT8, "retrain", size=1000)
    mode, payload = encode_tensor(old, new, INT8, 9, 2)
    assert mode in (TensorMode.SPARSE, TensorMode.SPARSE_VALUES)
    changed = ReadBuffer(payload, "p").varint()
    forged = varint(1001) + payload[len(varint(changed)) :]
    with pytest.raises(DeltaError) as caught:
        decode_tensor(old, mode, forged, INT8, 2)
    assert caught.value.code == "corrupt"


# ------------------------------------------------------------------ whole deltas, both versions


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> BundlePair:
    root = tmp_path_factory.mktemp("pair")
    return bundle_pair(root, model_bytes=48 * 1024, precision="int8", scenario="finetune")


def test_a_version_1_delta_still_applies_and_version_2_is_smaller(pair, tmp_path):
    tensor_only = (DeltaCodec.TENSOR,)
    old_format = encode(pair.old, pair.new, options=DeltaOptions(codecs=tensor_only, format_version=1))
    new_format = encode(pair.old, pair.new, options=DeltaOptions(codecs=tensor_only))
    assert (read_delta_header(old_format.data).format_version, new_format.header.format_version) == (1, 2)
    for delta in (old_format, new_format):
        apply(pair.old, delta.data, tmp_path / "out.mfb")
        assert (tmp_path / "out.mfb").read_bytes() == pair.new.read_bytes()
    assert len(new_format.data) < len(old_format.data)


@pytest.mark.parametrize("codec", [DeltaCodec.ZSTD, DeltaCodec.BSDIFF4])
def test_generic_deltas_are_written_as_version_1_so_older_readers_apply_them(pair, codec):
    delta = encode(pair.old, pair.new, options=DeltaOptions(codecs=(codec,)))
    assert read_delta_header(delta.data).format_version == 1


def test_a_version_2_delta_relabelled_version_1_is_refused_and_writes_nothing(pair, tmp_path):
    data = encode(pair.old, pair.new, options=DeltaOptions(codecs=(DeltaCodec.TENSOR,))).data
    relabelled = data[:4] + b"\x01" + data[5:]
    out = tmp_path / "out.mfb"
    with pytest.raises(DeltaError) as caught:
        apply(pair.old, relabelled, out)
    assert caught.value.code == "corrupt"
    assert list(Path(tmp_path).iterdir()) == []


def test_an_unknown_format_version_cannot_be_requested(pair):
    with pytest.raises(ValueError, match="format_version 3"):
        encode(pair.old, pair.new, options=DeltaOptions(format_version=3))
