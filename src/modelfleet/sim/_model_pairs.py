"""Pairs of signed bundles, an old release and a new one, for delta tests and ``bench/delta.py``.

An MLP classifier (MatMul + Add + Relu layers, Softmax head) in FP32 or INT8 QDQ
(per-tensor or per-channel weight scales), and three ways a release changes it:
``sparse`` (5% of the weights retrained), ``finetune`` (every weight moved by
N(0, 0.01 std)) and ``last_layer`` (only the head retrained). An INT8 release
re-quantizes with the old scales, as ``bundle build --parent`` does, so the
change is in the weights and not in the quantizer. Everything derives from ``seed``.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelfleet.bundle import (
    Behaviour,
    Contract,
    Evidence,
    FeatureHistogram,
    FileEntry,
    Golden,
    Head,
    Histogram,
    Manifest,
    ModelInfo,
    Provenance,
    Quantization,
    References,
    RuntimeRequirement,
    SignatureEnvelope,
    SigningKey,
    TensorSpec,
    TrustedKeys,
    write_bundle,
)

__all__ = ["SCENARIOS", "BundlePair", "Precision", "Scenario", "bundle_pair", "layer_shape"]

Precision = Literal["fp32", "int8", "int8_channel"]
Scenario = Literal["sparse", "finetune", "last_layer"]
SCENARIOS: tuple[Scenario, ...] = ("sparse", "finetune", "last_layer")
Layers = list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]

_CLASSES, _GOLDEN, _LAYERS = 10, 4, 2
_SPARSE_SHARE, _FINETUNE_SCALE = 0.05, 0.01


@dataclass(frozen=True)
class BundlePair:
    """Two bundles of the same model, what changed between them, and the weights of both."""

    old: Path
    new: Path
    precision: Precision
    scenario: Scenario
    old_weights: dict[str, npt.NDArray[np.generic]]
    new_weights: dict[str, npt.NDArray[np.generic]]
    trusted: TrustedKeys


def layer_shape(model_bytes: int, precision: Precision) -> tuple[int, int]:
    """Return ``(width, layers)`` of an MLP whose weights take about ``model_bytes``."""
    per_value = 4 if precision == "fp32" else 1
    layers = _LAYERS if model_bytes < 8 * 1024 * 1024 else 8
    width = max(16, round(math.sqrt(model_bytes / per_value / layers) / 16) * 16)
    return width, layers


def _weights(rng: np.random.Generator, width: int, layers: int) -> Layers:
    shapes = [(width, width)] * layers + [(width, _CLASSES)]
    return [
        (
            rng.normal(0.0, 1.0 / math.sqrt(fan_in), size=(fan_in, fan_out)).astype(np.float32),
            rng.normal(0.0, 0.01, size=fan_out).astype(np.float32),
        )
        for fan_in, fan_out in shapes
    ]


def _change(array: npt.NDArray[np.float32], scenario: Scenario, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    std = float(array.std()) or 1.0
    if scenario == "finetune":
        return (array + rng.normal(0.0, _FINETUNE_SCALE * std, size=array.shape)).astype(np.float32)
    new = array.copy()
    mask = rng.random(array.shape) < (_SPARSE_SHARE if scenario == "sparse" else 1.0)
    new[mask] = rng.normal(0.0, std, size=int(mask.sum())).astype(np.float32)
    return new


def _changed(layers: Layers, scenario: Scenario, rng: np.random.Generator) -> Layers:
    if scenario == "last_layer":
        *body, (w, b) = layers
        return [*body, (_change(w, scenario, rng), _change(b, scenario, rng))]
    return [(_change(w, scenario, rng), _change(b, scenario, rng)) for w, b in layers]


def _scales(w: npt.NDArray[np.float32], per_channel: bool) -> npt.NDArray[np.float32]:
    peak = np.abs(w).max(axis=0) if per_channel else np.abs(w).max()
    return np.asarray(np.maximum(peak, 1e-8) / 127.0, dtype=np.float32)


def _quantize(w: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> npt.NDArray[np.int8]:
    quantized: npt.NDArray[np.int8] = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return quantized


def _initializers(
    layers: Layers, precision: Precision, scales: list[npt.NDArray[np.float32]]
) -> dict[str, npt.NDArray[np.generic]]:
    tensors: dict[str, npt.NDArray[np.generic]] = {}
    for index, ((w, b), scale) in enumerate(zip(layers, scales, strict=True)):
        if precision == "fp32":
            tensors[f"W{index}"] = w
        else:
            tensors[f"W{index}_q"] = _quantize(w, scale)
            tensors[f"W{index}_scale"] = scale
            tensors[f"W{index}_zero"] = np.zeros(scale.shape, dtype=np.int8)
        tensors[f"B{index}"] = b
    return tensors


def _nodes(count: int, precision: Precision) -> list[onnx.NodeProto]:
    nodes, current = [], "X"
    for index in range(count):
        weight = f"W{index}"
        if precision != "fp32":
            inputs = [f"W{index}_q", f"W{index}_scale", f"W{index}_zero"]
            nodes.append(helper.make_node("DequantizeLinear", inputs, [weight], axis=1))  # ignored for one scale
        nodes.append(helper.make_node("MatMul", [current, weight], [f"M{index}"]))
        nodes.append(helper.make_node("Add", [f"M{index}", f"B{index}"], [f"A{index}"]))
        current = f"A{index}"
        if index < count - 1:
            nodes.append(helper.make_node("Relu", [current], [f"R{index}"]))
            current = f"R{index}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1))
    return nodes


def _model(tensors: dict[str, npt.NDArray[np.generic]], count: int, width: int, precision: Precision) -> bytes:
    graph = helper.make_graph(
        _nodes(count, precision),
        f"mlp-{precision}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", _CLASSES])],
        initializer=[numpy_helper.from_array(np.asarray(value), name=name) for name, value in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelfleet.sim")
    serialized: bytes = model.SerializeToString()
    return serialized


def _forward(
    tensors: dict[str, npt.NDArray[np.generic]], count: int, x: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    h = x
    for index in range(count):
        if f"W{index}" in tensors:
            w = tensors[f"W{index}"].astype(np.float32)
        else:
            w = tensors[f"W{index}_q"].astype(np.float32) * tensors[f"W{index}_scale"].astype(np.float32)
        h = h @ w + tensors[f"B{index}"].astype(np.float32)
        if index < count - 1:
            h = np.maximum(h, 0.0)
    shifted = np.exp(h - h.max(axis=1, keepdims=True))
    probabilities: npt.NDArray[np.float32] = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


def _manifest(
    files: tuple[FileEntry, ...], width: int, version: str, release: int, confidence: tuple[int, ...]
) -> Manifest:
    return Manifest(
        format="modelfleet.bundle.v1",
        name="delta-mlp",
        version=version,
        release=release,
        created=f"2026-01-{release:02d}T00:00:00Z",
        model=ModelInfo(file="model.onnx", format="onnx", opset=17),
        files=files,
        contract=Contract(
            inputs=(TensorSpec(name="X", dtype="float32", shape=("N", width)),),
            outputs=(TensorSpec(name="probabilities", dtype="float32", shape=("N", _CLASSES)),),
            head=Head(scores_output="probabilities", scores="probabilities", n_classes=_CLASSES),
            quantization=Quantization(scheme="none"),
            runtime=RuntimeRequirement(name="onnxruntime", specifier=">=1.17"),
        ),
        behaviour=Behaviour(thresholds={"accept": 0.5}),
        evidence=Evidence(
            references=References(
                n=_GOLDEN,
                features=(FeatureHistogram(input="X", index=0, edges=(-math.inf, 0.0, math.inf), counts=(2, 2)),),
                confidence=Histogram(edges=(0.0, 0.5, 0.8, 1.0), counts=confidence),
            ),
            golden=Golden(file="golden.npz", count=_GOLDEN, atol=1e-5, rtol=1e-4),
            provenance=Provenance(tool="modelfleet.sim model pairs"),
        ),
    )


@dataclass(frozen=True)
class _Release:
    version: str
    release: int
    precision: Precision
    tensors: dict[str, npt.NDArray[np.generic]]


def _golden(release: _Release, count: int, x: npt.NDArray[np.float32]) -> tuple[bytes, tuple[int, ...]]:
    """Golden vectors from a numpy forward pass, and the confidence histogram they give."""
    probabilities = _forward(release.tensors, count, x)
    buffer = io.BytesIO()
    np.savez(buffer, X=x, probabilities=probabilities)
    counts = np.histogram(probabilities.max(axis=1), [0.0, 0.5, 0.8, 1.0])[0]
    return buffer.getvalue(), tuple(int(c) for c in counts)


def _write_bundle(out: Path, release: _Release, count: int, width: int, key: SigningKey) -> None:
    x = np.random.default_rng(0).normal(size=(_GOLDEN, width)).astype(np.float32)
    golden, confidence = _golden(release, count, x)
    model = _model(release.tensors, count, width, release.precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = {"golden.npz": out.with_suffix(".golden.npz"), "model.onnx": out.with_suffix(".onnx")}
    staged["golden.npz"].write_bytes(golden)
    staged["model.onnx"].write_bytes(model)
    files = tuple(
        FileEntry(path=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for name, data in (("golden.npz", golden), ("model.onnx", model))
    )
    manifest = _manifest(files, width, release.version, release.release, confidence)
    envelope = SignatureEnvelope.of([key.sign(manifest.to_bytes())])
    write_bundle(out, manifest, envelope, staged)
    for path in staged.values():
        path.unlink()


def bundle_pair(
    directory: Path, *, model_bytes: int, precision: Precision, scenario: Scenario, seed: int = 0
) -> BundlePair:
    """Write ``old.mfb`` and ``new.mfb`` (about ``model_bytes`` of weights) under ``directory``."""
    rng_old, rng_new = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    width, layers = layer_shape(model_bytes, precision)
    old_layers = _weights(rng_old, width, layers)
    new_layers = _changed(old_layers, scenario, rng_new)
    scales = [_scales(w, precision == "int8_channel") for w, _ in old_layers]
    old = _Release("1.0.0", 1, precision, _initializers(old_layers, precision, scales))
    new = _Release("1.1.0", 2, precision, _initializers(new_layers, precision, scales))
    key = SigningKey.generate()
    stem = directory / f"{precision}-{scenario}-{model_bytes}"
    for name, release in (("old", old), ("new", new)):
        _write_bundle(stem / f"{name}.mfb", release, len(old_layers), width, key)
    trusted = TrustedKeys.of([key.public], 1)
    return BundlePair(stem / "old.mfb", stem / "new.mfb", precision, scenario, old.tensors, new.tensors, trusted)
