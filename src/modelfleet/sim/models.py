"""Small real models for tests, the demo and the simulator, each with its validation data.

Every factory writes a real ONNX file that ONNX Runtime runs and returns a
:class:`ModelCase` with held-out inputs. Everything is derived from ``seed``, so
the same call writes the same model. scikit-learn and skl2onnx are imported inside
:func:`digits_mlp` only: they belong to the ``train`` extra, which devices do not
install.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ModelCase", "digits_mlp", "fine_tuned", "large_matmul", "tiny_cnn", "trap_classifier"]

_OPSET = 17
_CHUNK_VALUES = 1 << 18  # float32 values generated and written at a time: 1 MiB


@dataclass(frozen=True, eq=False)
class ModelCase:
    """An ONNX model on disk and the validation data that belongs to it.

    Attributes:
        path: the ONNX file.
        x_val: held-out inputs in the layout the model expects (float32).
        y_val: integer class labels of ``x_val``, or ``None`` when the model has no
            ground truth (random weights): its own predictions are not evidence.
        labels: class names, one per output class.
        framework_accuracy: accuracy of the trained estimator itself (scikit-learn's
            ``score``) on ``x_val``, to compare the exported model with; ``None`` when
            the model was never trained.
    """

    path: Path
    x_val: npt.NDArray[np.float32]
    y_val: npt.NDArray[np.int64] | None
    labels: tuple[str, ...]
    framework_accuracy: float | None = None


def _class_names(classes: int) -> tuple[str, ...]:
    return tuple(f"class_{index}" for index in range(classes))


def _generators(seed: int, count: int) -> list[np.random.Generator]:
    """Independent streams per purpose, so changing one (say, chunking) never shifts another."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(count)]


# ------------------------------------------------------------------ digits MLP


def digits_mlp(path: Path, *, seed: int = 0, hidden: int = 32) -> ModelCase:
    """Train an MLP on scikit-learn's bundled handwritten digits and export it to ONNX.

    Pixels are scaled to [0, 1] (``x_val`` holds the scaled values the model
    expects); a stratified 25 % of the 1797 images is held out. The ONNX model has
    input ``X: float32[?, 64]`` and outputs ``label: int64[?]`` and
    ``probabilities: float32[?, 10]`` (no ZipMap).
    """
    try:  # the train extra is not installed on devices, so these are imported only here
        from skl2onnx import to_onnx  # noqa: PLC0415
        from sklearn.datasets import load_digits  # noqa: PLC0415
        from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
        from sklearn.model_selection import train_test_split  # noqa: PLC0415
        from sklearn.neural_network import MLPClassifier  # noqa: PLC0415
    except ImportError as exc:
        msg = "digits_mlp trains with scikit-learn and skl2onnx: pip install 'modelfleet[train]'"
        raise ImportError(msg) from exc

    images, targets = load_digits(return_X_y=True)
    x = (images / 16.0).astype(np.float32)
    y = targets.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    classifier = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=500, random_state=seed)
    with warnings.catch_warnings():
        # Small hidden sizes may stop at max_iter; the model is still a working classifier.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train, y_train)
    model = to_onnx(
        classifier,
        x_train[:1],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": _OPSET, "ai.onnx.ml": 3},
    )
    onnx.save_model(model, path)
    return ModelCase(
        path=path,
        x_val=np.ascontiguousarray(x_val),
        y_val=np.asarray(y_val, np.int64),
        labels=tuple(str(label) for label in classifier.classes_),
        framework_accuracy=float(classifier.score(x_val, y_val)),
    )


# ------------------------------------------------------------------ tiny CNN


def _cnn_graph(weights: dict[str, npt.NDArray[np.float32]], channels: int, size: int, classes: int) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])]
    outputs = [
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
    ]
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    return helper.make_graph(nodes, "tiny_cnn", inputs, outputs, initializers)


def tiny_cnn(
    path: Path, *, seed: int = 0, channels: int = 3, size: int = 16, classes: int = 4, rows: int = 256
) -> ModelCase:
    """Write a small image classifier (Conv, Relu, GlobalAveragePool, Gemm, Softmax) with random weights.

    Input ``x: float32[N, channels, size, size]``, outputs ``probabilities`` and
    ``label``. The validation images are noise around a few per-channel offsets, so
    the pooled features (and the confidences) spread out instead of all sitting at
    the origin. No labels: the model was never trained.
    """
    weight_rng, data_rng = _generators(seed, 2)
    filters = 8
    weights = {
        "conv_w": weight_rng.standard_normal((filters, channels, 3, 3), dtype=np.float32) / math.sqrt(channels * 9),
        "conv_b": weight_rng.standard_normal(filters, dtype=np.float32) * np.float32(0.1),
        "fc_w": weight_rng.standard_normal((filters, classes), dtype=np.float32) * np.float32(4 / math.sqrt(filters)),
        "fc_b": np.zeros(classes, dtype=np.float32),
    }
    model = helper.make_model(
        _cnn_graph(weights, channels, size, classes), opset_imports=[helper.make_opsetid("", _OPSET)]
    )
    onnx.checker.check_model(model)
    onnx.save_model(model, path)
    offsets = data_rng.standard_normal((classes, channels), dtype=np.float32)
    cluster = data_rng.integers(0, classes, rows)
    noise = data_rng.standard_normal((rows, channels, size, size), dtype=np.float32) * np.float32(0.5)
    x_val = (noise + offsets[cluster][:, :, None, None]).astype(np.float32)
    return ModelCase(path=path, x_val=x_val, y_val=None, labels=_class_names(classes))


# ------------------------------------------------------------------ large MatMul


def _length_delimited(field_number: int, length: int) -> bytes:
    """Protobuf key and length of a length-delimited field (wire type 2)."""
    return _varint(field_number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:  # noqa: PLR2004 - seven payload bits per varint byte
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _normal_chunks(rng: np.random.Generator, count: int, scale: float) -> Iterator[bytes]:
    """Yield ``count`` scaled normal float32 values as little-endian bytes, 1 MiB at a time."""
    for start in range(0, count, _CHUNK_VALUES):
        chunk = rng.standard_normal(min(_CHUNK_VALUES, count - start), dtype=np.float32) * np.float32(scale)
        yield chunk.astype("<f4", copy=False).tobytes()


def _append_initializer(handle: BinaryIO, name: str, dims: tuple[int, int], data: Iterator[bytes]) -> None:
    """Append one float32 initializer to a serialized ModelProto, streaming its raw bytes.

    Protobuf merges a message field that appears twice and appends to repeated
    fields, so a trailing ``graph { initializer { ... } }`` record adds the tensor
    to the graph already written. The weights never exist as one buffer.
    """
    head = TensorProto(name=name, dims=dims, data_type=TensorProto.FLOAT).SerializeToString()
    raw_bytes = dims[0] * dims[1] * 4
    raw_key = _length_delimited(TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number, raw_bytes)
    tensor_bytes = len(head) + len(raw_key) + raw_bytes
    initializer_key = _length_delimited(onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number, tensor_bytes)
    graph_bytes = len(initializer_key) + tensor_bytes
    handle.write(_length_delimited(onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number, graph_bytes))
    handle.write(initializer_key + head + raw_key)
    written = sum(handle.write(chunk) for chunk in data)
    if written != raw_bytes:
        msg = f"wrote {written} weight bytes for {name}, expected {raw_bytes}"
        raise RuntimeError(msg)


def _large_matmul_without_big_weights(features: int, classes: int, head: npt.NDArray[np.float32]) -> onnx.ModelProto:
    """The large classifier's graph; ``w_big`` is appended to the file afterwards, streamed."""
    nodes = [
        helper.make_node("MatMul", ["x", "w_big"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["relu"]),
        helper.make_node("MatMul", ["relu", "w_head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "large_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(head, "w_head")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])


def large_matmul(
    path: Path,
    *,
    size_bytes: int = 50 * 2**20,
    seed: int = 0,
    features: int = 256,
    classes: int = 10,
    rows: int = 128,
) -> ModelCase:
    """Write a classifier dominated by one float32 weight matrix of about ``size_bytes``.

    ``x: float32[N, features]`` -> MatMul (``features x hidden``, the big one) ->
    Relu -> MatMul (``hidden x classes``) -> Softmax. ``hidden`` is chosen so the big
    matrix holds ``size_bytes``; it is streamed to disk in 1 MiB chunks, so writing
    a large model never holds its weights in memory.

    Raises:
        ValueError: ``size_bytes`` is too small for even one hidden unit.
    """
    hidden = size_bytes // (4 * features)
    if hidden < 1:
        msg = f"size_bytes={size_bytes} is below one hidden unit ({4 * features} bytes)"
        raise ValueError(msg)
    weight_rng, head_rng, data_rng = _generators(seed, 3)
    head = head_rng.standard_normal((hidden, classes), dtype=np.float32) * np.float32(3 / math.sqrt(hidden))
    model = _large_matmul_without_big_weights(features, classes, head)
    with path.open("wb") as handle:
        handle.write(model.SerializeToString())
        _append_initializer(
            handle, "w_big", (features, hidden), _normal_chunks(weight_rng, features * hidden, 1 / math.sqrt(features))
        )
    x_val = data_rng.standard_normal((rows, features), dtype=np.float32)
    return ModelCase(path=path, x_val=x_val, y_val=None, labels=_class_names(classes))


# ------------------------------------------------------------------ fine-tuned release


def fine_tuned(source: Path, path: Path, *, scale: float = 0.01, seed: int = 0) -> Path:
    """Write the model at ``source`` with every float32 weight moved by N(0, ``scale`` x its std) to ``path``.

    What a fine-tune does to a model: the next release in delta tests, the same tensors
    with new values, whose delta the tensor codec wins over generic ones (ADR 0009). The
    model's validation data still fits it.
    """
    model = onnx.load(source)
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size > 1:
            moved = values + rng.normal(0.0, scale * (float(values.std()) or 1.0), values.shape)
            tensor.CopyFrom(numpy_helper.from_array(moved.astype(np.float32), tensor.name))
    onnx.save(model, path)
    return path


# ------------------------------------------------------------------ trap classifier


def _spin_body() -> onnx.GraphProto:
    """A ``Loop`` body that does nothing but go round."""
    return helper.make_graph(
        [helper.make_node("Identity", ["go"], ["go_on"]), helper.make_node("Identity", ["carried"], ["carried_on"])],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("go", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("go_on", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_on", TensorProto.FLOAT, []),
        ],
    )


def trap_classifier(
    path: Path, *, features: int = 64, classes: int = 10, batch: str | None = "N", seed: int = 1, rows: int = 64
) -> ModelCase:
    """Write a linear softmax classifier with traps, for tests of hangs and runtime errors.

    Inputs in [0, 1] (the validation set) run normally. An input holding a value
    above 100 sets the trip count of a ``Loop`` to about 1e11, so the inference
    spins for hours (a hung model); a value below -100 makes a ``Gather`` index
    out of range, so ONNX Runtime raises (a model that fails at run time).

    Args:
        path: where to write the model.
        features: width of the input ``X: float32[batch, features]``.
        classes: width of the output ``probabilities``.
        batch: the batch dimension's name, or ``None`` for an unnamed one.
        seed: derives the weights and the validation inputs.
        rows: validation rows.
    """
    weight_rng, data_rng = _generators(seed, 2)
    nodes = [
        helper.make_node("ReduceMax", ["X"], ["top"], keepdims=0),
        helper.make_node("Sub", ["top", "hundred"], ["over"]),
        helper.make_node("Relu", ["over"], ["excess"]),
        helper.make_node("Mul", ["excess", "billion"], ["spins"]),
        helper.make_node("Cast", ["spins"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "yes", "zero"], ["spun"], body=_spin_body()),
        helper.make_node("ReduceMin", ["X"], ["bottom"], keepdims=0),
        helper.make_node("Neg", ["bottom"], ["negated"]),
        helper.make_node("Relu", ["negated"], ["under"]),
        helper.make_node("Cast", ["under"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["one_zero", "index"], ["poked"]),
        helper.make_node("MatMul", ["X", "w"], ["product"]),
        helper.make_node("Add", ["product", "spun"], ["shifted"]),
        helper.make_node("Add", ["shifted", "poked"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    constants = {
        "hundred": np.array(100.0, np.float32),
        "billion": np.array(1e9, np.float32),
        "yes": np.ones((), dtype=bool),
        "zero": np.array(0.0, np.float32),
        "one_zero": np.zeros(1, np.float32),
        "w": weight_rng.standard_normal((features, classes)).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "trap",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    x_val = data_rng.uniform(0.0, 1.0, (rows, features)).astype(np.float32)
    return ModelCase(path=path, x_val=x_val, y_val=None, labels=_class_names(classes))
