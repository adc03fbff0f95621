"""``build_bundle`` on real models: contract from the model, evidence from the validation set, refusals.

Everything is real: scikit-learn trains the digits MLP, skl2onnx exports it, ONNX
Runtime runs and quantizes, and every bundle is read back with ``read_bundle``.
"""

import json
import tempfile
from datetime import UTC, datetime

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from packaging.version import Version

from modelfleet import __version__
from modelfleet.bundle import (
    BuildOptions,
    Calibration,
    HardwareTargets,
    Preprocessing,
    SigningKey,
    TensorSpec,
    TrustedKeys,
    ValidationSet,
    build_bundle,
    load_validation_set,
    read_bundle,
)
from modelfleet.bundle._onnx_graph import ModelGraph
from modelfleet.bundle._options import runtime_of
from modelfleet.clock import ManualClock
from modelfleet.errors import BuildError, ParityError, ValidationSetError
from modelfleet.sim import digits_mlp, tiny_cnn

IDENTITY = {"name": "digits", "version": "1.0.0", "release": 1}
BUILT_AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


# ------------------------------------------------------------------ models and builds


def linear_model(path, *, inputs, classes, softmax=True, weights=None, seed=0):
    """A linear classifier over the concatenated inputs (each ``[batch, features]``)."""
    features = sum(shape[1] for shape in inputs.values())
    rng = np.random.default_rng(seed)
    w = weights if weights is not None else rng.standard_normal((features, classes)).astype(np.float32)
    names = list(inputs)
    nodes = []
    if len(names) > 1:
        nodes.append(helper.make_node("Concat", names, ["joined"], axis=1))
    nodes.append(helper.make_node("MatMul", ["joined" if len(names) > 1 else names[0], "w"], ["logits"]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1))
    batch = next(iter(inputs.values()))[0]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("scores" if softmax else "logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


def near_tie_model(path, features=8):
    """Two classes whose weights differ by 1e-3: INT8 rounding cannot tell them apart."""
    rng = np.random.default_rng(0)
    column = rng.standard_normal((features, 1)).astype(np.float32)
    weights = np.concatenate([column, column + 1e-3 * rng.standard_normal((features, 1)).astype(np.float32)], axis=1)
    linear_model(path, inputs={"x": ["N", features]}, classes=2, weights=weights)


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


@pytest.fixture(scope="module")
def trusted(key):
    return TrustedKeys.of([key.public])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_mlp(tmp_path_factory.mktemp("digits") / "digits.onnx", seed=0)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return tiny_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx", seed=0)


def validation_of(case):
    return ValidationSet(inputs={"x": case.x_val}, labels=case.y_val)


@pytest.fixture(scope="module")
def built(tmp_path_factory, key, digits, cnn):
    """Bundles built once per module, by (model, quantization)."""
    out = tmp_path_factory.mktemp("built")
    cases = {"digits": digits, "cnn": cnn}
    cache = {}

    def get(model, quantize="none"):
        if (model, quantize) not in cache:
            path = out / f"{model}-{quantize}.mfb"
            options = BuildOptions(**IDENTITY, quantize=quantize, labels=cases[model].labels)
            manifest = build_bundle(cases[model].path, validation_of(cases[model]), [key], path, options)
            cache[model, quantize] = (manifest, path)
        return cache[model, quantize]

    return get


def build(case_path, validation, out, key, **options):
    return build_bundle(case_path, validation, [key], out, BuildOptions(**{**IDENTITY, **options}))


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ float builds


@pytest.mark.parametrize("model", ["digits", "cnn"])
def test_float_bundle_verifies_with_the_signing_key(built, trusted, model):
    manifest, path = built(model)
    verified = read_bundle(path, trusted)
    assert verified.manifest == manifest
    assert [f.path for f in manifest.files] == ["golden.npz", "model.onnx"]


def test_contract_is_read_from_the_digits_model(built):
    manifest, _ = built("digits")
    contract = manifest.contract
    assert contract.inputs == (TensorSpec(name="X", dtype="float32", shape=("?", 64)),)
    assert contract.outputs == (
        TensorSpec(name="label", dtype="int64", shape=("?",)),
        TensorSpec(name="probabilities", dtype="float32", shape=("?", 10)),
    )
    assert (contract.head.scores_output, contract.head.scores, contract.head.label_output) == (
        "probabilities",
        "probabilities",
        "label",
    )
    assert contract.head.n_classes == 10
    assert contract.quantization.scheme == "none"
    assert manifest.model.opset == 17


def test_cnn_contract_keeps_its_symbolic_batch_dimension(built):
    manifest, _ = built("cnn")
    assert manifest.contract.inputs == (TensorSpec(name="x", dtype="float32", shape=("N", 3, 16, 16)),)
    assert manifest.contract.head.n_classes == 4


@pytest.mark.parametrize(("model", "features"), [("digits", 64), ("cnn", 3)])
def test_references_hold_one_histogram_per_feature_counting_every_row(built, digits, cnn, model, features):
    manifest, _ = built(model)
    rows = len({"digits": digits, "cnn": cnn}[model].x_val)
    references = manifest.evidence.references
    assert references.n == rows
    assert [(h.input, h.index) for h in references.features] == [
        (manifest.contract.inputs[0].name, i) for i in range(features)
    ]
    for histogram in references.features:
        assert sum(histogram.counts) == rows
        assert (histogram.edges[0], histogram.edges[-1]) == (-np.inf, np.inf)


def test_reference_edges_are_quantiles_so_continuous_features_fill_their_bins_evenly(built, cnn):
    manifest, _ = built("cnn")
    channel_means = cnn.x_val.mean(axis=(2, 3), dtype=np.float64)
    for histogram in manifest.evidence.references.features:
        assert len(histogram.counts) == 10
        assert max(histogram.counts) - min(histogram.counts) <= 2
        assert histogram.edges[5] == pytest.approx(np.median(channel_means[:, histogram.index]))


def test_a_feature_that_never_varies_gets_one_edge_at_its_value(built, digits):
    manifest, _ = built("digits")
    assert np.all(digits.x_val[:, 0] == 0.0)
    first_pixel = manifest.evidence.references.features[0]
    assert first_pixel.edges == (-np.inf, 0.0, np.inf)
    assert first_pixel.counts == (0, len(digits.x_val))


@pytest.mark.parametrize("model", ["digits", "cnn"])
def test_confidence_histogram_counts_every_row_on_equal_width_bins(built, model):
    manifest, _ = built(model)
    confidence = manifest.evidence.references.confidence
    assert confidence.edges == tuple(i / 20 for i in range(21))
    assert sum(confidence.counts) == manifest.evidence.references.n


@pytest.mark.parametrize(
    ("model", "quantize"), [("digits", "none"), ("cnn", "none"), ("digits", "int8"), ("cnn", "int8")]
)
def test_golden_vectors_rerun_through_onnx_runtime_within_tolerance(built, trusted, tmp_path, model, quantize):
    manifest, path = built(model, quantize)
    verified = read_bundle(path, trusted, extract_to=tmp_path / "bundle")
    golden = np.load(verified.files["golden.npz"])
    session = ort.InferenceSession(str(verified.files["model.onnx"]), providers=["CPUExecutionProvider"])
    feeds = {name.removeprefix("input."): golden[name] for name in golden.files if name.startswith("input.")}
    names = [o.name for o in session.get_outputs()]
    assert sorted(golden.files) == sorted([f"input.{n}" for n in feeds] + [f"output.{n}" for n in names])
    for name, value in zip(names, session.run(None, feeds), strict=True):
        tolerance = manifest.evidence.golden
        np.testing.assert_allclose(value, golden[f"output.{name}"], atol=tolerance.atol, rtol=tolerance.rtol)
    assert manifest.evidence.golden.count == 16


def test_golden_rows_are_evenly_spaced_validation_rows(built, trusted, tmp_path, digits):
    _, path = built("digits")
    verified = read_bundle(path, trusted, extract_to=tmp_path / "bundle")
    golden = np.load(verified.files["golden.npz"])
    rows = np.linspace(0, len(digits.x_val) - 1, 16).round().astype(int)
    np.testing.assert_array_equal(golden["input.X"], digits.x_val[rows])


def test_accuracy_matches_scikit_learns_own_score_on_the_same_split(built, digits):
    metrics = built("digits")[0].evidence.metrics
    assert metrics["n_validation"] == len(digits.x_val)
    assert metrics["accuracy"] == pytest.approx(digits.framework_accuracy, abs=0.01)
    assert 0.0 <= metrics["ece"] <= 0.1
    assert 0.5 < metrics["mean_confidence"] <= 1.0


def test_a_model_without_labels_gets_label_free_metrics_only(built):
    metrics = built("cnn")[0].evidence.metrics
    assert set(metrics) == {"n_validation", "mean_confidence"}


def test_logit_outputs_are_recognised_and_softmaxed_for_confidence(tmp_path, key):
    weights = linear_model(tmp_path / "logits.onnx", inputs={"x": ["N", 6]}, classes=3, softmax=False)
    x = np.random.default_rng(1).standard_normal((64, 6)).astype(np.float32)
    manifest = build(tmp_path / "logits.onnx", ValidationSet({"x": x}, None), tmp_path / "out.mfb", key)
    assert manifest.contract.head.scores == "logits"
    expected = softmax(x.astype(np.float64) @ weights.astype(np.float64)).max(axis=1).mean()
    assert manifest.evidence.metrics["mean_confidence"] == pytest.approx(expected, rel=1e-5)


def test_a_model_with_two_inputs_gets_histograms_for_both(tmp_path, key):
    linear_model(tmp_path / "two.onnx", inputs={"a": ["N", 3], "b": ["N", 5]}, classes=4)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "val.npz", a=rng.standard_normal((40, 3)), b=rng.standard_normal((40, 5)))
    validation = load_validation_set(tmp_path / "val.npz", ["a", "b"])
    manifest = build(tmp_path / "two.onnx", validation, tmp_path / "out.mfb", key)
    assert [(h.input, h.index) for h in manifest.evidence.references.features] == [("a", i) for i in range(3)] + [
        ("b", i) for i in range(5)
    ]


def test_a_fixed_batch_model_is_fed_in_its_batch_size(tmp_path, key):
    linear_model(tmp_path / "fixed.onnx", inputs={"x": [4, 8]}, classes=3)
    x = np.random.default_rng(3).standard_normal((12, 8)).astype(np.float32)
    manifest = build(tmp_path / "fixed.onnx", ValidationSet({"x": x}, None), tmp_path / "out.mfb", key, golden_count=6)
    assert manifest.evidence.references.n == 12
    assert manifest.evidence.golden.count == 4  # a multiple of the batch the model insists on


def test_two_builds_of_the_same_inputs_sign_identical_manifests(tmp_path, key, digits):
    manifests = [
        build_bundle(
            digits.path,
            validation_of(digits),
            [key],
            tmp_path / f"{attempt}.mfb",
            BuildOptions(**IDENTITY),
            clock=ManualClock(BUILT_AT),
        )
        for attempt in ("first", "second")
    ]
    assert manifests[0].to_bytes() == manifests[1].to_bytes()
    assert manifests[0].created == "2024-05-01T12:30:00Z"


def test_options_travel_into_behaviour_contract_and_provenance(tmp_path, key, digits):
    options = BuildOptions(
        **IDENTITY,
        parent="0.9.0",
        labels=digits.labels,
        thresholds={"reject_below": 0.55},
        calibration=Calibration(method="temperature", params={"t": 1.5}),
        max_latency_ms=20.0,
        max_ram_bytes=64 * 2**20,
        hardware=HardwareTargets(arch=("aarch64",), min_ram_bytes=2**30),
        fallback_class=0,
        dataset="sklearn-digits",
        code_commit="abc123",
    )
    manifest = build_bundle(digits.path, validation_of(digits), [key], tmp_path / "out.mfb", options)
    assert manifest.parent == "0.9.0"
    assert manifest.contract.labels == digits.labels
    assert manifest.contract.hardware.arch == ("aarch64",)
    assert manifest.behaviour.thresholds == {"reject_below": 0.55}
    assert manifest.behaviour.calibration == Calibration(method="temperature", params={"t": 1.5})
    assert (manifest.behaviour.budgets.max_latency_ms, manifest.behaviour.budgets.max_ram_bytes) == (20.0, 64 * 2**20)
    assert manifest.behaviour.fallback_class == 0
    provenance = manifest.evidence.provenance
    assert (provenance.dataset, provenance.code_commit, provenance.tool) == (
        "sklearn-digits",
        "abc123",
        f"modelfleet {__version__}",
    )


def test_runtime_requirement_defaults_to_the_oldest_onnxruntime_for_the_digits_model(built):
    # skl2onnx writes opset 17, ONNX-ML opset 1, IR 8: onnxruntime 1.13 loads it.
    runtime = built("digits")[0].contract.runtime
    assert (runtime.name, runtime.specifier) == ("onnxruntime", ">=1.13")


def test_preprocessing_spec_ships_verbatim(tmp_path, key, trusted, digits):
    spec = b'{"id": "digits-8x8-scale16", "version": 2, "divide_by": 16}\n'
    (tmp_path / "pre.json").write_bytes(spec)
    out = tmp_path / "out.mfb"
    manifest = build(digits.path, validation_of(digits), out, key, preprocess=tmp_path / "pre.json")
    assert manifest.contract.preprocessing == Preprocessing(id="digits-8x8-scale16", version=2, file="preprocess.json")
    verified = read_bundle(out, trusted, extract_to=tmp_path / "bundle")
    assert verified.files["preprocess.json"].read_bytes() == spec


@pytest.mark.parametrize(
    ("quantize", "steps"),
    [
        ("none", ["evaluate", "golden", "hash", "write"]),
        ("int8", ["evaluate", "quantize", "parity", "golden", "hash", "write"]),
    ],
)
def test_progress_reports_every_long_step_to_completion(tmp_path, key, digits, quantize, steps):
    calls = []
    build_bundle(
        digits.path,
        validation_of(digits),
        [key],
        tmp_path / "out.mfb",
        BuildOptions(**IDENTITY, quantize=quantize),
        progress=lambda step, done, total: calls.append((step, done, total)),
    )
    assert list(dict.fromkeys(step for step, _, _ in calls)) == steps
    for step in steps:
        last = [(done, total) for name, done, total in calls if name == step][-1]
        assert last[0] == last[1]
    assert all(0 <= done <= total for _, done, total in calls)


# ------------------------------------------------------------------ INT8


@pytest.mark.parametrize("model", ["digits", "cnn"])
def test_int8_build_records_parity_and_the_quantized_tensors(built, trusted, tmp_path, model):
    manifest, path = built(model, "int8")
    parity = manifest.evidence.parity
    assert parity is not None
    assert parity.agreement >= 0.98
    assert parity.n == manifest.evidence.references.n
    assert parity.min_required == 0.98
    quantization = manifest.contract.quantization
    assert (quantization.scheme, quantization.per_channel) == ("int8", False)
    assert quantization.tensors
    assert all(t.axis is None and len(t.scale) == len(t.zero_point) == 1 for t in quantization.tensors)
    shipped = read_bundle(path, trusted, extract_to=tmp_path / "bundle").files["model.onnx"]
    operators = {node.op_type for node in onnx.load(shipped).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators


def test_int8_quantized_tensor_names_are_tensors_of_the_shipped_graph(built, trusted, tmp_path):
    manifest, path = built("digits", "int8")
    graph = onnx.load(read_bundle(path, trusted, extract_to=tmp_path / "bundle").files["model.onnx"]).graph
    tensors = {t.name for t in graph.initializer} | {out for node in graph.node for out in node.output}
    assert {t.name for t in manifest.contract.quantization.tensors} <= tensors


def test_per_channel_int8_records_one_scale_per_output_channel(tmp_path, key, digits):
    manifest = build(digits.path, validation_of(digits), tmp_path / "out.mfb", key, quantize="int8", per_channel=True)
    per_channel = [t for t in manifest.contract.quantization.tensors if t.axis is not None]
    assert manifest.contract.quantization.per_channel
    assert sorted(len(t.scale) for t in per_channel) == [10, 32]  # the two weight matrices' output columns


def test_int8_model_that_loses_the_decision_is_refused_and_nothing_is_written(tmp_path, key):
    near_tie_model(tmp_path / "tie.onnx")
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    out = tmp_path / "tie.mfb"
    with pytest.raises(ParityError) as refused:
        build(tmp_path / "tie.onnx", ValidationSet({"x": x}, None), out, key, quantize="int8")
    assert refused.value.code == "below_parity"
    assert "of 200 validation rows" in refused.value.message
    assert "at least 0.9800 is required" in refused.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tie.onnx"]


def test_a_failed_build_leaves_no_temporary_files(tmp_path, key, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    near_tie_model(tmp_path / "tie.onnx")
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    with pytest.raises(ParityError):
        build(tmp_path / "tie.onnx", ValidationSet({"x": x}, None), tmp_path / "tie.mfb", key, quantize="int8")
    assert list(scratch.iterdir()) == []


def test_a_failed_build_keeps_the_previous_bundle_untouched(tmp_path, key, digits):
    out = tmp_path / "digits.mfb"
    out.write_bytes(b"the previous bundle")
    narrow = ValidationSet({"x": digits.x_val[:, :63]}, None)
    with pytest.raises(ValidationSetError):
        build(digits.path, narrow, out, key)
    assert out.read_bytes() == b"the previous bundle"


# ------------------------------------------------------------------ validation sets that do not fit


def rows_of(case, rows=10):
    return case.x_val[:rows]


VALIDATION_MISFITS = {
    "wrong feature count": (lambda c: ValidationSet({"x": rows_of(c)[:, :63]}, None), "shape", ["axis 1", "64", "63"]),
    "wrong rank": (lambda c: ValidationSet({"x": rows_of(c).reshape(10, 8, 8)}, None), "rank", ["rank 2", "rank 3"]),
    "dtype that cannot be cast": (
        lambda c: ValidationSet({"x": rows_of(c).astype(np.complex64)}, None),
        "dtype",
        ["complex64", "float32"],
    ),
    "strings instead of numbers": (
        lambda c: ValidationSet({"x": rows_of(c).astype(str)}, None),
        "dtype",
        ["<U", "cannot be cast"],
    ),
    "labels of another length": (
        lambda c: ValidationSet({"x": rows_of(c)}, np.zeros(9, np.int64)),
        "label_count",
        ["9 rows", "10"],
    ),
    "labels that are not class indices": (
        lambda c: ValidationSet({"x": rows_of(c)}, np.full(10, 12, np.int64)),
        "label_range",
        ["label 12", "0..9"],
    ),
    "float labels": (lambda c: ValidationSet({"x": rows_of(c)}, np.zeros(10)), "label_dtype", ["integer", "float64"]),
    "no rows": (lambda c: ValidationSet({"x": rows_of(c, 0)}, None), "empty", ["no rows"]),
    "NaN in the inputs": (
        lambda c: ValidationSet({"x": np.where(np.arange(64) == 5, np.nan, rows_of(c))}, None),
        "non_finite",
        ["NaN", "row 0"],
    ),
    "an array the model does not have": (
        lambda c: ValidationSet({"X": rows_of(c), "extra": rows_of(c)}, None),
        "unexpected_array",
        ["extra"],
    ),
    "no array for the input": (lambda c: ValidationSet({"pixels": rows_of(c)}, None), "missing_array", ["X"]),
}


@pytest.mark.parametrize("misfit", VALIDATION_MISFITS.values(), ids=VALIDATION_MISFITS.keys())
def test_a_validation_set_that_does_not_fit_the_model_is_refused(tmp_path, key, digits, misfit):
    make, code, fragments = misfit
    out = tmp_path / "never.mfb"
    with pytest.raises(ValidationSetError) as refused:
        build(digits.path, make(digits), out, key)
    assert refused.value.code == code
    for fragment in fragments:
        assert fragment in refused.value.message
    assert not out.exists()


def test_inputs_with_different_row_counts_are_refused(tmp_path, key):
    linear_model(tmp_path / "two.onnx", inputs={"a": ["N", 3], "b": ["N", 5]}, classes=4)
    validation = ValidationSet({"a": np.zeros((10, 3), np.float32), "b": np.zeros((12, 5), np.float32)}, None)
    with pytest.raises(ValidationSetError, match="a=10, b=12") as refused:
        build(tmp_path / "two.onnx", validation, tmp_path / "out.mfb", key)
    assert refused.value.code == "row_count"


def test_rows_that_do_not_fill_a_fixed_batch_are_refused(tmp_path, key):
    linear_model(tmp_path / "fixed.onnx", inputs={"x": [4, 8]}, classes=3)
    validation = ValidationSet({"x": np.zeros((10, 8), np.float32)}, None)
    with pytest.raises(ValidationSetError, match="fixed batch of 4; 10 validation rows"):
        build(tmp_path / "fixed.onnx", validation, tmp_path / "out.mfb", key)


def test_float64_and_integer_arrays_are_cast_to_the_float32_contract(tmp_path, key, digits):
    as_float64 = build(
        digits.path, ValidationSet({"x": digits.x_val.astype(np.float64)}, None), tmp_path / "a.mfb", key
    )
    pixels = (digits.x_val * 16).round().astype(np.int64)  # integer pixels of another scale: castable, so accepted
    as_int = build(digits.path, ValidationSet({"x": pixels}, None), tmp_path / "b.mfb", key)
    assert as_float64.evidence.references.n == as_int.evidence.references.n == len(digits.x_val)


# ------------------------------------------------------------------ reading VAL.npz


def save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_load_validation_set_reads_x_and_y(tmp_path, digits):
    path = save(tmp_path / "val.npz", x=digits.x_val, y=digits.y_val)
    validation = load_validation_set(path)
    assert list(validation.inputs) == ["x"]
    np.testing.assert_array_equal(validation.inputs["x"], digits.x_val)
    np.testing.assert_array_equal(validation.labels, digits.y_val)
    assert list(load_validation_set(path, ["X"]).inputs) == ["X"]


VAL_FILE_PROBLEMS = {
    "missing x": (lambda p: save(p, y=np.zeros(3, np.int64)), "missing_array", "no array 'x'"),
    "pickled objects": (lambda p: save(p, x=np.array([{"a": 1}], dtype=object)), "pickled_array", "pickled"),
    "labels of another length": (
        lambda p: save(p, x=np.zeros((4, 64)), y=np.zeros(3, np.int64)),
        "label_count",
        "3 rows but the inputs have 4",
    ),
    "labels with two axes": (
        lambda p: save(p, x=np.zeros((4, 64)), y=np.zeros((4, 1), np.int64)),
        "label_dtype",
        "1-D",
    ),
    "an unexpected array": (lambda p: save(p, x=np.zeros((4, 64)), z=np.zeros(4)), "unexpected_array", "'z'"),
    "a single .npy array": (lambda p: np.save(p, np.zeros((4, 64))) or p.with_suffix(".npz.npy"), "not_npz", "single"),
    "a text file": (lambda p: p.write_text("1,2,3\n") and p, "not_npz", "not an .npz"),
    "a truncated zip": (lambda p: p.write_bytes(b"PK\x03\x04broken") and p, "unreadable", "not a readable"),
    "no file at all": (lambda p: p, "unreadable", "cannot read"),
}


@pytest.mark.parametrize("problem", VAL_FILE_PROBLEMS.values(), ids=VAL_FILE_PROBLEMS.keys())
def test_load_validation_set_names_what_is_wrong_with_the_file(tmp_path, problem):
    write, code, fragment = problem
    path = write(tmp_path / "val.npz")
    with pytest.raises(ValidationSetError) as refused:
        load_validation_set(path)
    assert refused.value.code == code
    assert fragment in refused.value.message


# ------------------------------------------------------------------ options and models that are refused


BAD_OPTIONS = {
    "version that is not semver": ({"version": "1.0"}, "invalid_semver", "'1.0' is not a semantic version"),
    "parent that is not semver": ({"parent": "v0.9"}, "invalid_semver", "parent 'v0.9'"),
    "name with capitals": ({"name": "Digits"}, "invalid_name", "name 'Digits'"),
    "negative release": ({"release": -1}, "invalid_release", "non-negative"),
    "labels for another class count": (
        {"labels": ("a", "b", "c")},
        "labels",
        "3 labels given, but the model scores 10",
    ),
    "fallback class out of range": ({"fallback_class": 10}, "fallback_class", "fallback_class 10"),
    "parity bound above 1": ({"min_parity": 1.01}, "bad_option", "min_parity must be between 0 and 1"),
    "no golden vectors": ({"golden_count": 0}, "bad_option", "golden_count"),
    "runtime that is not a specifier": ({"runtime_specifier": "onnxruntime 1.17"}, "schema", "PEP 440"),
    "threshold that is not finite": ({"thresholds": {"reject": float("nan")}}, "schema", "behaviour.thresholds.reject"),
    "scores output that is not scores": ({"scores_output": "label"}, "scores_output", "'label'"),
}


@pytest.mark.parametrize("bad", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_refused_with_the_option_named(tmp_path, key, digits, bad):
    overrides, code, fragment = bad
    out = tmp_path / "never.mfb"
    with pytest.raises(BuildError) as refused:
        build(digits.path, validation_of(digits), out, key, **overrides)
    assert refused.value.code == code
    assert fragment in refused.value.message
    assert not out.exists()


def test_a_bundle_needs_a_signing_key(tmp_path, digits):
    with pytest.raises(BuildError) as refused:
        build_bundle(digits.path, validation_of(digits), [], tmp_path / "out.mfb", BuildOptions(**IDENTITY))
    assert refused.value.code == "no_signing_key"


def test_a_preprocessing_spec_without_a_valid_version_is_refused(tmp_path, key, digits):
    (tmp_path / "pre.json").write_text(json.dumps({"id": "scale16", "version": 0}))
    with pytest.raises(BuildError, match=r"preprocess file .*version"):
        build(digits.path, validation_of(digits), tmp_path / "out.mfb", key, preprocess=tmp_path / "pre.json")


def test_a_file_that_is_not_onnx_is_a_bad_model(tmp_path, key, digits):
    (tmp_path / "model.onnx").write_text("definitely not a protobuf\n")
    with pytest.raises(BuildError) as refused:
        build(tmp_path / "model.onnx", validation_of(digits), tmp_path / "out.mfb", key)
    assert refused.value.code == "bad_model"
    assert refused.value.message.startswith(f"{tmp_path / 'model.onnx'} is not an ONNX model")


def test_a_missing_model_file_is_a_bad_model(tmp_path, key, digits):
    with pytest.raises(BuildError, match="cannot read model") as refused:
        build(tmp_path / "nowhere.onnx", validation_of(digits), tmp_path / "out.mfb", key)
    assert refused.value.code == "bad_model"


def test_more_features_than_a_manifest_can_hold_are_refused(tmp_path, key):
    linear_model(tmp_path / "wide.onnx", inputs={"x": ["N", 4097]}, classes=2)
    validation = ValidationSet({"x": np.zeros((3, 4097), np.float32)}, None)
    with pytest.raises(BuildError, match="4097 features") as refused:
        build(tmp_path / "wide.onnx", validation, tmp_path / "out.mfb", key)
    assert refused.value.code == "too_many_features"


def test_a_non_tensor_output_is_refused_with_a_hint(tmp_path, key):
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, ["N", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "seq.onnx")
    validation = ValidationSet({"x": np.zeros((4, 4), np.float32)}, None)
    with pytest.raises(BuildError, match=r"not a tensor.*ZipMap") as refused:
        build(tmp_path / "seq.onnx", validation, tmp_path / "out.mfb", key)
    assert refused.value.code == "unsupported_tensor"


# ------------------------------------------------------- runtime requirement

RUNTIME_CASES = [
    pytest.param(ModelGraph(opset=17, inputs=(), outputs=(), ir_version=8, ml_opset=1), ">=1.13", id="opset17-ir8"),
    pytest.param(ModelGraph(opset=13, inputs=(), outputs=(), ir_version=7, ml_opset=None), ">=1.6", id="opset13"),
    pytest.param(ModelGraph(opset=17, inputs=(), outputs=(), ir_version=10, ml_opset=3), ">=1.18", id="ir10-wins"),
    pytest.param(ModelGraph(opset=21, inputs=(), outputs=(), ir_version=8, ml_opset=3), ">=1.20", id="opset21"),
]


@pytest.mark.parametrize(("graph", "expected"), RUNTIME_CASES)
def test_default_runtime_requirement_is_the_oldest_release_that_loads_the_model(graph, expected):
    options = BuildOptions(name="m", version="1.0.0", release=1)
    assert runtime_of(options, graph).specifier == expected


def test_a_model_newer_than_the_table_requires_the_runtime_that_built_it():
    built = Version(ort.__version__)
    graph = ModelGraph(opset=99, inputs=(), outputs=(), ir_version=8)
    options = BuildOptions(name="m", version="1.0.0", release=1)
    assert runtime_of(options, graph).specifier == f">={built.major}.{built.minor}"


def test_an_explicit_runtime_specifier_wins():
    graph = ModelGraph(opset=17, inputs=(), outputs=(), ir_version=8)
    options = BuildOptions(name="m", version="1.0.0", release=1, runtime_specifier=">=1.17,<2")
    assert runtime_of(options, graph).specifier == ">=1.17,<2"
