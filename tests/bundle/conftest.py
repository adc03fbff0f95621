"""Real signed bundles for the bundle tests, made without the (future) builder.

A tiny ONNX classifier (MatMul + Softmax), golden vectors saved by numpy, a
manifest built from the schema models, fresh Ed25519 keys and ``write_bundle``.
A :class:`SignedBundle` can also take itself apart into tar members and put
them back together, so a test can play a hostile archive (any order, name,
type or size) or a compromised builder (anything re-signed by trusted keys).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelfleet.bundle import (
    BUNDLE_FORMAT,
    Behaviour,
    Budgets,
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
    Signature,
    SignatureEnvelope,
    SigningKey,
    TensorSpec,
    TrustedKeys,
    write_bundle,
)
from modelfleet.bundle._container import BLOCK, MANIFEST_MEMBER, SIGNATURE_MEMBER, tar_header

N_FEATURES, N_CLASSES, N_GOLDEN = 4, 3, 8
END_OF_ARCHIVE = b"\x00" * (2 * BLOCK)


# ------------------------------------------------------------------ tar pieces


@dataclass(frozen=True)
class Member:
    """One tar member as a hostile archive may spell it.

    ``size`` overrides the size written in the header (defaults to ``len(data)``).
    """

    name: str
    data: bytes
    typeflag: bytes = b"0"
    linkname: str = ""
    prefix: str = ""
    size: int | None = None

    def header(self) -> bytes:
        size = len(self.data) if self.size is None else self.size
        return tar_header(self.name, size, typeflag=self.typeflag, linkname=self.linkname, prefix=self.prefix)


def assemble(members: Iterable[Member], *, end: bytes = END_OF_ARCHIVE) -> bytes:
    """Lay ``members`` out as a tar stream (header, data, zero padding), then ``end``."""
    out = bytearray()
    for member in members:
        out += member.header() + member.data + b"\x00" * (-len(member.data) % BLOCK)
    return bytes(out + end)


def with_checksum(header: bytes) -> bytes:
    """Recompute the checksum of a hand-edited header block, as a careful attacker would."""
    block = bytearray(header)
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}".encode("ascii") + b"\x00 "
    return bytes(block)


# ------------------------------------------------------------------ manifests


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def entries_for(payload: Mapping[str, Path]) -> tuple[FileEntry, ...]:
    """File entries with the real size and sha256 of each payload file, sorted by name."""
    return tuple(
        FileEntry(path=name, size=payload[name].stat().st_size, sha256=sha256_of(payload[name]))
        for name in sorted(payload)
    )


def build_manifest(
    files: Sequence[FileEntry],
    *,
    model_file: str = "model.onnx",
    model_format: str = "onnx",
    features: Sequence[Sequence[int]] = ((4, 4),) * N_FEATURES,
    confidence: Sequence[int] = (0, 2, 6),
) -> Manifest:
    """A complete, valid manifest for the tiny classifier over ``files``."""
    return Manifest(
        format=BUNDLE_FORMAT,
        name="tiny-classifier",
        version="1.2.0",
        release=3,
        created="2026-01-01T00:00:00Z",
        parent="1.1.0",
        model=ModelInfo(file=model_file, format=model_format, opset=17 if model_format == "onnx" else None),
        files=tuple(files),
        contract=Contract(
            inputs=(TensorSpec(name="X", dtype="float32", shape=("N", N_FEATURES)),),
            outputs=(TensorSpec(name="probabilities", dtype="float32", shape=("N", N_CLASSES)),),
            head=Head(scores_output="probabilities", scores="probabilities", n_classes=N_CLASSES),
            quantization=Quantization(scheme="none"),
            labels=("cat", "dog", "bird"),
            runtime=RuntimeRequirement(name="onnxruntime", specifier=">=1.17"),
        ),
        behaviour=Behaviour(thresholds={"accept": 0.5}, budgets=Budgets(max_latency_ms=5.0, max_ram_bytes=64 << 20)),
        evidence=Evidence(
            references=References(
                n=N_GOLDEN,
                features=tuple(
                    FeatureHistogram(input="X", index=i, edges=(-math.inf, 0.0, math.inf), counts=tuple(counts))
                    for i, counts in enumerate(features)
                ),
                confidence=Histogram(edges=(0.0, 0.5, 0.8, 1.0), counts=tuple(confidence)),
            ),
            golden=Golden(file="golden.npz", count=N_GOLDEN, atol=1e-5, rtol=1e-4),
            metrics={"accuracy": 0.875},
            provenance=Provenance(tool="modelfleet test"),
        ),
    )


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    """A valid manifest whose file entries point at no real files (schema tests)."""
    files = (
        FileEntry(path="golden.npz", size=10, sha256="a" * 64),
        FileEntry(path="model.onnx", size=20, sha256="b" * 64),
    )
    return build_manifest(files)


# ------------------------------------------------------------------ model files


@dataclass(frozen=True)
class TinyModel:
    model: Path
    golden: Path
    inputs: np.ndarray
    probabilities: np.ndarray


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A real ONNX classifier ``X[N, 4] -> probabilities[N, 3]`` and its golden vectors."""
    directory = tmp_path_factory.mktemp("tiny-model")
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny-classifier",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", N_CLASSES])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelfleet-tests")
    onnx.checker.check_model(model)
    model_path = directory / "model.onnx"
    onnx.save(model, model_path)
    inputs = rng.normal(size=(N_GOLDEN, N_FEATURES)).astype(np.float32)
    probabilities = _softmax(inputs @ weights).astype(np.float32)
    golden_path = directory / "golden.npz"
    np.savez(golden_path, X=inputs, probabilities=probabilities)
    return TinyModel(model_path, golden_path, inputs, probabilities)


def _references(tiny: TinyModel) -> dict[str, Any]:
    """Reference histograms of the golden inputs on the manifest's fixed edges."""
    features = [
        tuple(int(c) for c in np.histogram(tiny.inputs[:, i], [-np.inf, 0.0, np.inf])[0]) for i in range(N_FEATURES)
    ]
    top1 = tiny.probabilities.max(axis=1)
    confidence = tuple(int(c) for c in np.histogram(top1, [0.0, 0.5, 0.8, 1.0])[0])
    return {"features": features, "confidence": confidence}


# ------------------------------------------------------------------ bundles


@dataclass(frozen=True)
class SignedBundle:
    """A bundle written by ``write_bundle`` and what a test needs to tamper with it."""

    path: Path
    manifest: Manifest
    envelope: SignatureEnvelope
    keys: tuple[SigningKey, ...]
    trusted: TrustedKeys
    payload: dict[str, Path]

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def members(self) -> list[Member]:
        """The members in archive order, exactly as ``write_bundle`` laid them out."""
        return [
            Member(MANIFEST_MEMBER, self.manifest.to_bytes()),
            Member(SIGNATURE_MEMBER, self.envelope.to_bytes()),
            *(Member(entry.path, self.payload[entry.path].read_bytes()) for entry in self.manifest.files),
        ]

    def offset(self, name: str) -> int:
        """Where member ``name``'s data starts in :attr:`data` (its header is the block before)."""
        position = 0
        for member in self.members():
            position += BLOCK
            if member.name == name:
                return position
            position += len(member.data) + (-len(member.data) % BLOCK)
        raise KeyError(name)

    def manifest_dict(self) -> dict[str, Any]:
        """A fresh, editable copy of the manifest as JSON values."""
        loaded: dict[str, Any] = json.loads(self.manifest.to_bytes())
        return loaded

    @staticmethod
    def member(name: str, data: bytes, **fields: Any) -> Member:
        """A new tar member (see :class:`Member` for ``typeflag``, ``linkname``, ``prefix``, ``size``)."""
        return Member(name, data, **fields)

    @staticmethod
    def assemble(members: Iterable[Member], *, end: bytes = END_OF_ARCHIVE) -> bytes:
        """Lay ``members`` out as a tar stream, then ``end``."""
        return assemble(members, end=end)

    def patch_header(self, name: str, at: int, new: bytes, *, fix_checksum: bool = True) -> bytes:
        """The bundle bytes with ``new`` written at byte ``at`` of member ``name``'s header block."""
        data = bytearray(self.data)
        start = self.offset(name) - BLOCK
        block = bytearray(data[start : start + BLOCK])
        block[at : at + len(new)] = new
        data[start : start + BLOCK] = with_checksum(bytes(block)) if fix_checksum else block
        return bytes(data)

    def with_envelope(self, envelope: bytes) -> bytes:
        """The bundle bytes with ``manifest.sig`` replaced by ``envelope``."""
        members = self.members()
        members[1] = Member(SIGNATURE_MEMBER, envelope)
        return assemble(members)

    def with_signatures(self, signatures: Iterable[Signature]) -> bytes:
        return self.with_envelope(SignatureEnvelope.of(signatures).to_bytes())

    def resign(self, manifest_bytes: bytes, signers: Iterable[SigningKey] | None = None) -> bytes:
        """Replace the manifest by ``manifest_bytes`` signed by trusted keys: a builder gone wrong."""
        signers = self.keys if signers is None else signers
        envelope = SignatureEnvelope.of(key.sign(manifest_bytes) for key in signers)
        members = self.members()
        members[0] = Member(MANIFEST_MEMBER, manifest_bytes)
        members[1] = Member(SIGNATURE_MEMBER, envelope.to_bytes())
        return assemble(members)


MakeBundle = Callable[..., SignedBundle]


@pytest.fixture
def make_bundle(tmp_path: Path, tiny_model: TinyModel) -> MakeBundle:
    """Factory: ``make_bundle(payload=..., model_file=..., keys=2, threshold=2)`` -> :class:`SignedBundle`.

    By default the payload is the tiny ONNX model and its golden vectors, and
    the bundle is signed by two fresh keys that are pinned 2-of-2.
    """

    def make(
        *,
        payload: dict[str, Path] | None = None,
        model_file: str = "model.onnx",
        model_format: str = "onnx",
        keys: int = 2,
        threshold: int = 2,
        name: str = "tiny-1.2.0.mfb",
    ) -> SignedBundle:
        payload = payload or {"golden.npz": tiny_model.golden, "model.onnx": tiny_model.model}
        manifest = build_manifest(
            entries_for(payload), model_file=model_file, model_format=model_format, **_references(tiny_model)
        )
        signing_keys = tuple(SigningKey.generate() for _ in range(keys))
        envelope = SignatureEnvelope.of(key.sign(manifest.to_bytes()) for key in signing_keys)
        path = tmp_path / "bundles" / name
        write_bundle(path, manifest, envelope, payload)
        trusted = TrustedKeys.of((key.public for key in signing_keys), threshold)
        return SignedBundle(path, manifest, envelope, signing_keys, trusted, dict(payload))

    return make


@pytest.fixture
def bundle(make_bundle: MakeBundle) -> SignedBundle:
    """The good bundle: tiny ONNX model + golden vectors, signed 2-of-2."""
    return make_bundle()


# ------------------------------------------------------------------ observing a reader


class ObservedStream(io.BytesIO):
    """An in-memory bundle that records how far a reader got and can look around on each read."""

    def __init__(self, data: bytes, on_read: Callable[[int], None] | None = None) -> None:
        super().__init__(data)
        self.high_water = 0
        self._on_read = on_read

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.high_water = max(self.high_water, self.tell())
        if self._on_read is not None:
            self._on_read(self.tell())
        return chunk


@pytest.fixture
def observed() -> Callable[..., ObservedStream]:
    """Factory for :class:`ObservedStream` (``observed(data, on_read=None)``)."""
    return ObservedStream
