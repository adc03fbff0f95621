"""The ``.mfb`` container: round trip, atomic extraction, bounded memory, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest

from modelfleet.bundle import read_bundle, read_header, write_bundle
from modelfleet.bundle._container import BLOCK

MIB = 1024 * 1024


def test_header_reads_back_manifest_and_signatures_as_written(bundle):
    header = read_header(bundle.path)

    assert (header.manifest, header.manifest_bytes, header.envelope) == (
        bundle.manifest,
        bundle.manifest.to_bytes(),
        bundle.envelope,
    )


def test_verified_bundle_names_the_keys_that_signed(bundle):
    verified = read_bundle(bundle.path, bundle.trusted)

    assert verified.signed_by == {key.public.keyid for key in bundle.keys}


def test_verify_without_target_extracts_nothing(bundle):
    before = sorted(bundle.path.parent.iterdir())

    verified = read_bundle(bundle.path, bundle.trusted)

    assert (verified.manifest, verified.directory, verified.files) == (bundle.manifest, None, {})
    assert sorted(bundle.path.parent.iterdir()) == before


def test_extracted_files_are_byte_equal_to_the_payload(bundle, tmp_path):
    target = tmp_path / "store" / "tiny-1.2.0"

    verified = read_bundle(bundle.path, bundle.trusted, extract_to=target)

    assert verified.directory == target
    assert {path.name: path.read_bytes() for path in target.iterdir()} == {
        name: source.read_bytes() for name, source in bundle.payload.items()
    }


def test_extraction_leaves_only_the_target_in_its_directory(bundle, tmp_path):
    store = tmp_path / "store"

    read_bundle(bundle.path, bundle.trusted, extract_to=store / "tiny-1.2.0")

    assert [path.name for path in store.iterdir()] == ["tiny-1.2.0"]


def test_extraction_target_appears_only_once_everything_verified(bundle, tmp_path, observed):
    target = tmp_path / "store" / "tiny-1.2.0"
    seen_while_reading: set[bool] = set()
    stream = observed(bundle.data, on_read=lambda _: seen_while_reading.add(target.exists()))

    read_bundle(stream, bundle.trusted, extract_to=target)

    assert seen_while_reading == {False}
    assert target.is_dir()


def test_existing_target_is_refused_and_left_alone(bundle, tmp_path):
    target = tmp_path / "store" / "tiny-1.2.0"
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"the installed model")

    with pytest.raises(FileExistsError):
        read_bundle(bundle.path, bundle.trusted, extract_to=target)

    assert [(p.name, p.read_bytes()) for p in target.iterdir()] == [("model.onnx", b"the installed model")]


def test_written_bundle_is_deterministic(bundle, tmp_path):
    again = tmp_path / "again.mfb"

    write_bundle(again, bundle.manifest, bundle.envelope, bundle.payload)

    assert again.read_bytes() == bundle.data


def test_written_bundle_is_whole_blocks_ending_in_two_zero_blocks(bundle):
    data = bundle.data

    assert (len(data) % BLOCK, data[-2 * BLOCK :]) == (0, b"\x00" * 2 * BLOCK)


def test_write_leaves_no_temp_file_when_a_payload_size_disagrees(bundle, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    shrunk = tmp_path / "model.onnx"
    shrunk.write_bytes(bundle.payload["model.onnx"].read_bytes()[:-1])

    with pytest.raises(ValueError, match="manifest says"):
        write_bundle(out_dir / "x.mfb", bundle.manifest, bundle.envelope, {**bundle.payload, "model.onnx": shrunk})

    assert list(out_dir.iterdir()) == []


def test_write_refuses_payload_that_is_not_the_manifest_files(bundle, tmp_path):
    out = tmp_path / "out" / "x.mfb"

    with pytest.raises(ValueError, match="differ from manifest files"):
        write_bundle(out, bundle.manifest, bundle.envelope, {"model.onnx": bundle.payload["model.onnx"]})

    assert not out.parent.exists()


def test_write_does_not_replace_an_existing_bundle_when_it_fails(bundle, tmp_path):
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"short")
    before = bundle.data

    with pytest.raises(ValueError, match="manifest says"):
        write_bundle(bundle.path, bundle.manifest, bundle.envelope, {**bundle.payload, "model.onnx": wrong})

    assert bundle.data == before


@pytest.fixture
def big_bundle(make_bundle, tiny_model, tmp_path):
    """A bundle whose model is 50 MiB of random bytes, written in chunks (never whole in memory)."""
    big = tmp_path / "model.bin"
    with big.open("wb") as handle:
        for _ in range(50):
            handle.write(os.urandom(MIB))
    return make_bundle(
        payload={"golden.npz": tiny_model.golden, "model.bin": big}, model_file="model.bin", model_format="opaque"
    )


def test_verifying_a_large_bundle_uses_bounded_memory(big_bundle):
    tracemalloc.start()
    try:
        verified = read_bundle(big_bundle.path, big_bundle.trusted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert verified.manifest.file("model.bin").size == 50 * MIB
    assert peak < 4 * MIB


def test_extracting_a_large_bundle_uses_bounded_memory(big_bundle, tmp_path):
    target = tmp_path / "store" / "big"
    tracemalloc.start()
    try:
        read_bundle(big_bundle.path, big_bundle.trusted, extract_to=target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    with (target / "model.bin").open("rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == big_bundle.manifest.file("model.bin").sha256
    assert peak < 4 * MIB


def test_extracted_model_reproduces_its_golden_vectors_in_onnx_runtime(bundle, tmp_path):
    verified = read_bundle(bundle.path, bundle.trusted, extract_to=tmp_path / "store" / "tiny-1.2.0")
    session = ort.InferenceSession(verified.files["model.onnx"], providers=["CPUExecutionProvider"])
    golden = np.load(verified.files["golden.npz"])
    tolerance = verified.manifest.evidence.golden

    (probabilities,) = session.run(["probabilities"], {"X": golden["X"]})

    np.testing.assert_allclose(probabilities, golden["probabilities"], rtol=tolerance.rtol, atol=tolerance.atol)
