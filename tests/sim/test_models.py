"""The small real models: they run in ONNX Runtime, are reproducible from a seed, and stay cheap to make."""

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelfleet.sim import digits_mlp, large_matmul, tiny_cnn


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x}), strict=True)
    )


def declared_shape(value_info):
    return [d.dim_param or d.dim_value or "?" for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_mlp(tmp_path_factory.mktemp("digits") / "digits.onnx", seed=0)


def test_digits_mlp_holds_out_a_labelled_float32_split(digits):
    assert digits.x_val.dtype == np.float32
    assert digits.x_val.shape == (450, 64)
    assert digits.y_val is not None
    assert digits.y_val.dtype == np.int64
    assert len(digits.y_val) == 450
    assert digits.labels == tuple(str(d) for d in range(10))
    assert 0.0 <= digits.x_val.min() <= digits.x_val.max() <= 1.0


def test_digits_mlp_exports_label_and_probabilities_without_zipmap(digits):
    model = onnx.load(digits.path)
    assert [(i.name, declared_shape(i)) for i in model.graph.input] == [("X", ["?", 64])]
    assert [(o.name, declared_shape(o)) for o in model.graph.output] == [("label", ["?"]), ("probabilities", ["?", 10])]


def test_exported_digits_model_is_as_accurate_as_the_sklearn_estimator(digits):
    outputs = run(digits.path, digits.x_val)
    onnx_accuracy = float((outputs["probabilities"].argmax(axis=1) == digits.y_val).mean())
    assert digits.framework_accuracy is not None
    assert digits.framework_accuracy > 0.9
    assert abs(onnx_accuracy - digits.framework_accuracy) <= 0.01
    np.testing.assert_array_equal(outputs["label"], outputs["probabilities"].argmax(axis=1))


def test_digits_mlp_is_reproducible_from_its_seed(digits, tmp_path):
    again = digits_mlp(tmp_path / "again.onnx", seed=0)
    assert again.path.read_bytes() == digits.path.read_bytes()
    np.testing.assert_array_equal(again.x_val, digits.x_val)


def test_tiny_cnn_has_a_symbolic_batch_and_runs_any_batch_size(tmp_path):
    case = tiny_cnn(tmp_path / "cnn.onnx", seed=3, channels=2, size=8, classes=5)
    model = onnx.load(case.path)
    assert declared_shape(model.graph.input[0]) == ["N", 2, 8, 8]
    for rows in (1, 7):
        probabilities = run(case.path, case.x_val[:rows])["probabilities"]
        assert probabilities.shape == (rows, 5)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_tiny_cnn_claims_no_labels_because_it_was_never_trained(tmp_path):
    case = tiny_cnn(tmp_path / "cnn.onnx")
    assert case.y_val is None
    assert case.framework_accuracy is None
    assert case.labels == ("class_0", "class_1", "class_2", "class_3")
    assert case.x_val.shape == (256, 3, 16, 16)


def test_tiny_cnn_is_reproducible_and_differs_between_seeds(tmp_path):
    first, again, other = (
        tiny_cnn(tmp_path / f"{name}.onnx", seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))
    )
    assert first.path.read_bytes() == again.path.read_bytes()
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert first.path.read_bytes() != other.path.read_bytes()


def test_large_matmul_is_one_dominant_initializer_of_about_size_bytes(tmp_path):
    size = 4 * 2**20
    case = large_matmul(tmp_path / "large.onnx", size_bytes=size)
    model = onnx.load(case.path)
    onnx.checker.check_model(model)
    sizes = sorted(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert sizes[-1] == pytest.approx(size, rel=0.01)
    assert sizes[-1] > 10 * sum(sizes[:-1])
    assert case.path.stat().st_size == pytest.approx(size, rel=0.1)


def test_large_matmul_runs_as_a_softmax_classifier(tmp_path):
    case = large_matmul(tmp_path / "large.onnx", size_bytes=2**20, classes=6)
    probabilities = run(case.path, case.x_val)["probabilities"]
    assert probabilities.shape == (len(case.x_val), 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert len(set(probabilities.argmax(axis=1))) > 1, "random weights should not collapse onto one class"


def test_large_matmul_streams_its_weights_to_disk(tmp_path):
    size = 32 * 2**20
    tracemalloc.start()
    try:
        large_matmul(tmp_path / "large.onnx", size_bytes=size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The weights are generated and written 1 MiB at a time; only the small head matrix
    # (hidden x classes, about 1/25 of the weights here) exists whole, twice while serialized.
    assert peak < size / 4


def test_sim_imports_and_builds_untrained_models_without_scikit_learn(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["sklearn"] = None  # what an install without the train extra looks like
        sys.modules["skl2onnx"] = None
        from pathlib import Path
        import modelfleet.sim as sim
        sim.tiny_cnn(Path({str(tmp_path / "cnn.onnx")!r}))
        try:
            sim.digits_mlp(Path({str(tmp_path / "digits.onnx")!r}))
        except ImportError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install 'modelfleet[train]'" in result.stdout
    assert (tmp_path / "cnn.onnx").exists()
