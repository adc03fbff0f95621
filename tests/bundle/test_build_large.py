"""A 50 MiB model through build, read_header and read_bundle with bounded Python memory.

tracemalloc sees every Python object and numpy array (numpy reports its buffers to
it); ONNX Runtime's and protobuf's native allocations are invisible to it, which is
exactly the split we want: the bounds below catch a Python-side copy of the payload.
"""

import tracemalloc

import pytest

from modelfleet.bundle import (
    BuildOptions,
    SigningKey,
    TrustedKeys,
    ValidationSet,
    build_bundle,
    read_bundle,
    read_header,
)
from modelfleet.sim import large_matmul

pytestmark = pytest.mark.slow

MODEL_BYTES = 50 * 2**20
READ_PEAK_BYTES = 4 * 2**20


def traced_peak(action):
    """Run ``action`` and return (its result, the peak of traced allocations it added)."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = action()
        return result, tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


@pytest.fixture(scope="module")
def large(tmp_path_factory, key):
    """The large model, its bundle, the manifest and build_bundle's traced peak."""
    root = tmp_path_factory.mktemp("large")
    case = large_matmul(root / "large.onnx", size_bytes=MODEL_BYTES)
    out = root / "large.mfb"
    options = BuildOptions(name="large", version="1.0.0", release=1)
    manifest, peak = traced_peak(
        lambda: build_bundle(case.path, ValidationSet({"x": case.x_val}, None), [key], out, options)
    )
    return case, out, manifest, peak


def test_large_bundle_round_trips_through_header_and_full_verification(large, key):
    case, out, manifest, _ = large
    assert read_header(out).manifest == manifest
    verified = read_bundle(out, TrustedKeys.of([key.public]))
    assert verified.manifest.file("model.onnx").size == case.path.stat().st_size
    assert verified.manifest.payload_bytes > MODEL_BYTES


def test_reading_a_large_bundle_hashes_in_chunks(large, key):
    _, out, _, _ = large
    trusted = TrustedKeys.of([key.public])
    read_header(out)  # first use compiles schema validators; that one-off cost is not reading
    _, peak = traced_peak(lambda: read_bundle(out, trusted))
    assert peak < READ_PEAK_BYTES, f"read_bundle peaked at {peak / 2**20:.1f} MiB"


def test_building_a_large_bundle_never_holds_the_model_in_python_memory(large):
    case, _, _, peak = large
    # The model is parsed from a memory map and copied, hashed and written in 1 MiB chunks,
    # so no Python buffer grows with it. A quarter of the model leaves room for the
    # validation rows, golden vectors and per-row scores, yet a single whole copy fails.
    assert peak < case.path.stat().st_size / 4, f"build_bundle peaked at {peak / 2**20:.1f} MiB"
