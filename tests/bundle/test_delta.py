"""Delta updates (ADR 0009): exact round trips per codec and change, and refusals that leave nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelfleet.bundle import read_bundle
from modelfleet.bundle._delta_onnx import tensor_spans
from modelfleet.bundle.delta import (
    DELTA_MAGIC,
    DeltaCodec,
    DeltaLimits,
    DeltaOptions,
    apply,
    encode,
    read_delta_header,
)
from modelfleet.errors import DeltaError
from modelfleet.sim._model_pairs import SCENARIOS, BundlePair, bundle_pair

MODEL_BYTES = 48 * 1024  # small enough for seconds, large enough that tensors dominate the bundle
PRECISIONS = ("fp32", "int8", "int8_channel")
GENERIC = (DeltaCodec.ZSTD, DeltaCodec.BSDIFF4)
ALL_CODECS = (DeltaCodec.TENSOR, *GENERIC)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[tuple[str, str], BundlePair]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        (precision, scenario): bundle_pair(root, model_bytes=MODEL_BYTES, precision=precision, scenario=scenario)
        for precision in PRECISIONS
        for scenario in SCENARIOS
    }


@pytest.fixture(scope="module")
def finetune(pairs) -> BundlePair:
    return pairs["fp32", "finetune"]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_delta_rebuilds_the_new_bundle_exactly_and_is_never_larger_than_a_generic_delta(
    pairs, tmp_path, precision, scenario
):
    pair = pairs[precision, scenario]
    delta = encode(pair.old, pair.new)
    out = tmp_path / "rebuilt.mfb"
    header = apply(pair.old, delta.data, out)
    assert out.read_bytes() == pair.new.read_bytes()
    assert header.target_sha256 == hashlib.sha256(pair.new.read_bytes()).hexdigest()
    assert read_bundle(out, pair.trusted).manifest.version == "1.1.0"
    assert set(delta.sizes) == set(ALL_CODECS)
    assert len(delta.data) == min(delta.sizes.values())
    assert len(delta.data) < pair.new.stat().st_size


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_fine_tune_is_sent_as_tensor_differences_well_below_the_best_generic_delta(pairs, precision):
    delta = encode(pairs[precision, "finetune"].old, pairs[precision, "finetune"].new)
    assert delta.codec is DeltaCodec.TENSOR
    assert delta.sizes[DeltaCodec.TENSOR] < 0.92 * min(delta.sizes[c] for c in GENERIC)


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_every_codec_rebuilds_the_bundle_when_it_is_the_only_one_allowed(finetune, tmp_path, codec):
    delta = encode(finetune.old, finetune.new, options=DeltaOptions(codecs=(codec,)))
    assert delta.codec is codec
    assert set(delta.sizes) == {codec}
    apply(finetune.old, delta.data, tmp_path / "out.mfb")
    assert (tmp_path / "out.mfb").read_bytes() == finetune.new.read_bytes()


def test_a_non_onnx_payload_goes_through_a_generic_codec(make_bundle, tmp_path):
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 256, size=40_000, dtype=np.uint8)
    changed = weights.copy()
    changed[rng.random(weights.size) < 0.02] += 1
    payloads = []
    for name, data in (("old", weights), ("new", changed)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(data.tobytes())
        (tmp_path / name / "golden.npz").write_bytes(b"golden")
        payloads.append({"model.bin": tmp_path / name / "model.bin", "golden.npz": tmp_path / name / "golden.npz"})
    old = make_bundle(payload=payloads[0], model_file="model.bin", model_format="opaque", name="old.mfb")
    new = make_bundle(payload=payloads[1], model_file="model.bin", model_format="opaque", name="new.mfb")
    delta = encode(old.path, new.path)
    assert DeltaCodec.TENSOR not in delta.sizes
    assert delta.codec in GENERIC
    apply(old.path, delta.data, tmp_path / "out.mfb")
    assert (tmp_path / "out.mfb").read_bytes() == new.data


def test_identical_bundles_give_a_delta_of_a_few_hundred_bytes(finetune, tmp_path):
    delta = encode(finetune.new, finetune.new)
    assert len(delta.data) < 300
    apply(finetune.new, delta.data, tmp_path / "same.mfb")
    assert (tmp_path / "same.mfb").read_bytes() == finetune.new.read_bytes()


def test_apply_reads_base_and_delta_from_files(finetune, tmp_path):
    delta_file = tmp_path / "d.mfd"
    delta_file.write_bytes(encode(finetune.old, finetune.new).data)
    apply(finetune.old, delta_file, tmp_path / "out.mfb")
    assert (tmp_path / "out.mfb").read_bytes() == finetune.new.read_bytes()


def test_float_data_tensors_are_found_as_spans_like_raw_data():
    values = np.arange(32, dtype=np.float32)
    packed = helper.make_tensor("P", TensorProto.FLOAT, [32], values.tolist(), raw=False)
    raw = numpy_helper.from_array(values * 2, name="R")
    graph = helper.make_graph([], "g", [], [], initializer=[packed, raw])
    data = helper.make_model(graph).SerializeToString()
    spans = {span.name: span for span in tensor_spans(data)}
    assert data[spans["P"].offset : spans["P"].offset + spans["P"].length] == values.tobytes()
    assert data[spans["R"].offset : spans["R"].offset + spans["R"].length] == (values * 2).tobytes()
    assert spans["R"].dims == (32,)
    assert spans["R"].dtype == onnx.TensorProto.FLOAT


def test_bytes_that_are_not_onnx_have_no_spans():
    assert tensor_spans(b"\xff\xff\xff\xff not protobuf") == []


# ------------------------------------------------------------------ header


def test_the_header_names_base_and_target_before_any_work(finetune):
    delta = encode(finetune.old, finetune.new)
    header = read_delta_header(delta.data)
    assert delta.data.startswith(DELTA_MAGIC)
    assert header == delta.header
    assert header.length < 80
    assert (header.base_sha256, header.base_size) == (
        hashlib.sha256(finetune.old.read_bytes()).hexdigest(),
        finetune.old.stat().st_size,
    )
    assert header.target_size == finetune.new.stat().st_size


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda d: b"NOTADELTA" + d[9:], "bad_header"),
        (lambda d: d[:4] + bytes([9]) + d[5:], "unsupported_version"),
        (lambda d: d[:12], "truncated"),
        (lambda d: d[:5] + bytes([9]) + d[6:], "bad_header"),
    ],
    ids=["magic", "version", "cut", "codec"],
)
def test_a_bad_header_is_refused_by_name(finetune, mangle, code):
    with pytest.raises(DeltaError) as caught:
        read_delta_header(mangle(encode(finetune.old, finetune.new).data))
    assert caught.value.code == code


# ------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def deltas(finetune) -> dict[DeltaCodec, bytes]:
    return {
        codec: encode(finetune.old, finetune.new, options=DeltaOptions(codecs=(codec,))).data for codec in ALL_CODECS
    }


def refused(base: Path | bytes, delta: bytes, out: Path) -> DeltaError:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"the bundle that was here before")
    with pytest.raises(DeltaError) as caught:
        apply(base, delta, out)
    assert out.read_bytes() == b"the bundle that was here before"
    assert leftovers(out.parent) == [out.name]
    return caught.value


@pytest.mark.parametrize("codec", ALL_CODECS)
@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_a_corrupt_delta_is_refused_and_leaves_the_output_as_it_was(finetune, deltas, tmp_path, codec, where):
    data = bytearray(deltas[codec])
    header_length = read_delta_header(bytes(data)).length
    at = header_length + int((len(data) - header_length) * where)
    data[at] ^= 0x5A
    error = refused(finetune.old, bytes(data), tmp_path / "out" / "new.mfb")
    assert error.code in {"corrupt", "truncated", "target_mismatch"}


@pytest.mark.parametrize("codec", ALL_CODECS)
@pytest.mark.parametrize("keep", [0.2, 0.5, 0.999])
def test_a_truncated_delta_is_refused_and_leaves_the_output_as_it_was(finetune, deltas, tmp_path, codec, keep):
    data = deltas[codec]
    error = refused(finetune.old, data[: int(len(data) * keep)], tmp_path / "out" / "new.mfb")
    assert error.code in {"corrupt", "truncated", "target_mismatch"}


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_a_delta_for_another_base_is_refused_before_it_is_applied(pairs, deltas, tmp_path, codec):
    other = pairs["int8", "finetune"].old
    error = refused(other, deltas[codec], tmp_path / "out" / "new.mfb")
    assert error.code == "wrong_base"
    assert "applies to the bundle with sha256" in error.message


def test_a_delta_whose_result_differs_from_its_header_is_refused(finetune, deltas, tmp_path):
    data = deltas[DeltaCodec.TENSOR]
    target = bytes.fromhex(read_delta_header(data).target_sha256)
    forged = data.replace(target, bytes(32), 1)
    error = refused(finetune.old, forged, tmp_path / "out" / "new.mfb")
    assert error.code == "target_mismatch"


def test_a_delta_rebuilding_more_than_the_limit_is_refused_before_reading_the_base(finetune, deltas, tmp_path):
    with pytest.raises(DeltaError) as caught:
        apply(
            b"not even read", deltas[DeltaCodec.TENSOR], tmp_path / "o.mfb", limits=DeltaLimits(max_target_bytes=1024)
        )
    assert caught.value.code == "too_large"
    assert leftovers(tmp_path) == []
