"""Device-side features are the builder's features, value for value, so live counts land in the reference bins."""

import numpy as np
import pytest

from modelfleet.bundle._reference import feature_values as builder_feature_values
from modelfleet.sim import tiny_cnn
from modelfleet.telemetry import feature_values

RNG = np.random.default_rng(7)

# name -> inputs (in feature order); every rank and dtype the builder accepts.
INPUT_SETS = {
    "vector": {"x": RNG.standard_normal(9).astype(np.float32)},
    "table float32": {"x": RNG.standard_normal((9, 5)).astype(np.float32)},
    "table float64": {"x": RNG.standard_normal((9, 5))},
    "table int64": {"x": RNG.integers(-1000, 1000, (9, 5))},
    "table uint8": {"x": RNG.integers(0, 255, (9, 5), dtype=np.uint8)},
    "table bool": {"x": RNG.integers(0, 2, (9, 5)).astype(bool)},
    "sequence": {"x": RNG.standard_normal((9, 4, 11)).astype(np.float32)},
    "image": {"x": RNG.standard_normal((9, 3, 16, 16)).astype(np.float32)},
    "image large values": {"x": (RNG.standard_normal((9, 3, 8, 8)) * 1e6).astype(np.float32)},
    "non-contiguous table": {"x": RNG.standard_normal((9, 10)).astype(np.float32)[:, ::2]},
    "with NaN and inf": {"x": np.array([[np.nan, 1.0], [np.inf, -np.inf], [0.0, -0.0]], dtype=np.float32)},
    "several inputs": {
        "a": RNG.standard_normal((9, 3)).astype(np.float32),
        "b": RNG.standard_normal(9).astype(np.float32),
        "c": RNG.standard_normal((9, 2, 5, 5)).astype(np.float32),
    },
}


def builder_features(inputs, order):
    return np.concatenate([builder_feature_values(inputs[name]) for name in order], axis=1)


@pytest.mark.parametrize("case", list(INPUT_SETS))
def test_device_features_equal_the_builders(case):
    inputs = INPUT_SETS[case]
    order = list(inputs)

    device = feature_values(inputs, order)

    expected = builder_features(inputs, order)
    assert device.dtype == np.float64
    assert device.shape == expected.shape
    assert np.array_equal(device, expected, equal_nan=True)


def test_device_features_equal_the_builders_on_a_real_validation_set(tmp_path):
    case = tiny_cnn(tmp_path / "cnn.onnx", seed=3)

    device = feature_values({"x": case.x_val}, ["x"])

    assert np.array_equal(device, builder_feature_values(case.x_val))


def test_one_row_equals_the_same_row_of_a_batch():
    images = INPUT_SETS["image"]["x"]

    rows = [feature_values({"x": images[i : i + 1]}, ["x"]) for i in range(len(images))]

    assert np.array_equal(np.concatenate(rows), feature_values({"x": images}, ["x"]))


def test_features_follow_the_given_input_order():
    inputs = INPUT_SETS["several inputs"]

    forward = feature_values(inputs, ["a", "b", "c"])
    backward = feature_values(inputs, ["c", "b", "a"])

    assert np.array_equal(forward[:, :3], backward[:, -3:])
    assert np.array_equal(forward[:, 3], backward[:, 2])


FEATURE_COUNTS = [((7,), 1), ((7, 64), 64), ((7, 3, 16, 16), 3), ((1, 5, 2), 5)]


@pytest.mark.parametrize(("shape", "count"), FEATURE_COUNTS)
def test_one_feature_per_vector_and_one_per_index_on_axis_1(shape, count):
    assert feature_values({"x": np.zeros(shape, np.float32)}, ["x"]).shape == (shape[0], count)


REFUSED = {
    "no inputs": ({}, [], "at least one input"),
    "scalar input": ({"x": np.float32(1.0) * np.ones(())}, ["x"], "batch axis"),
    "rows disagree": ({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, ["a", "b"], "disagree"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unusable_inputs_are_refused(case):
    inputs, order, message = REFUSED[case]
    with pytest.raises(ValueError, match=message):
        feature_values(inputs, order)
