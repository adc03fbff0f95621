"""The manifest schema: identity, contract, behaviour and evidence of one bundle.

The manifest travels as canonical JSON (see ``_canonical``). Decimal values are
strings in the JSON and ``float`` in Python; the ``Real`` type converts both ways
with the shortest text that round-trips (``repr``), so the bytes a builder signs
are the bytes every reader re-derives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from modelfleet.bundle._canonical import canonical_bytes, parse_canonical
from modelfleet.errors import ManifestError

__all__ = [
    "BUNDLE_FORMAT",
    "Behaviour",
    "Budgets",
    "Calibration",
    "Contract",
    "DType",
    "Evidence",
    "FeatureHistogram",
    "FileEntry",
    "Golden",
    "HardwareTargets",
    "Head",
    "Histogram",
    "Manifest",
    "ModelInfo",
    "Parity",
    "Preprocessing",
    "Provenance",
    "Quantization",
    "QuantizedTensor",
    "References",
    "RuntimeRequirement",
    "TensorSpec",
    "parse_manifest",
]

BUNDLE_FORMAT = "modelfleet.bundle.v1"

# semver.org's recommended expression (2.0.0), anchored; use fullmatch ("$" also matches before a
# final newline) and ASCII digits (Python's \d also matches other scripts' digits).
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
    re.ASCII,
)
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")  # \d is Unicode in pydantic
_SYMBOLIC_DIM = re.compile(r"^(\?|[A-Za-z_][A-Za-z0-9_]{0,63})$")

RESERVED_MEMBERS = frozenset({"manifest.json", "manifest.sig"})


def _parse_real(value: object) -> object:
    """Accept a decimal string (as JSON carries it) or a Python number."""
    if isinstance(value, bool):
        return value  # let the float validator refuse it
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            msg = f"not a decimal number: {value!r}"
            raise ValueError(msg) from None
        if math.isnan(number):
            msg = "NaN is not allowed"
            raise ValueError(msg)
        return number
    if isinstance(value, int):
        return float(value)
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        msg = f"must be finite, got {value!r}"
        raise ValueError(msg)
    return value


def _format_real(value: float) -> str:
    return repr(float(value))


Real = Annotated[
    float, BeforeValidator(_parse_real), AfterValidator(_finite), PlainSerializer(_format_real, return_type=str)
]
"""A finite decimal, a string in canonical JSON."""

Edge = Annotated[float, BeforeValidator(_parse_real), PlainSerializer(_format_real, return_type=str)]
"""A histogram edge; ``-inf`` / ``inf`` allowed for the open outer bins."""

NonNegInt = Annotated[int, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=_SHA256.pattern)]
MemberName = Annotated[str, Field(pattern=_MEMBER_NAME.pattern)]

DType = Literal[
    "bool",
    "bfloat16",
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "string",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, defer_build=True)


def _check_dim(dim: int | str) -> int | str:
    if isinstance(dim, int):
        if dim < 1:
            msg = f"fixed dimensions must be positive, got {dim}"
            raise ValueError(msg)
    elif not _SYMBOLIC_DIM.fullmatch(dim):
        msg = f"symbolic dimension {dim!r} must be an identifier or '?'"
        raise ValueError(msg)
    return dim


Dim = Annotated[int | str, AfterValidator(_check_dim)]


class TensorSpec(_Model):
    """One input or output tensor: name, element type, shape with symbolic dims."""

    name: str = Field(min_length=1, max_length=256)
    dtype: DType
    shape: tuple[Dim, ...] = Field(max_length=16)

    def describe(self) -> str:
        """Render as ``name: dtype[N, 64]``."""
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


class QuantizedTensor(_Model):
    """Scale and zero point of one quantized tensor (one entry per channel if per-channel).

    ``reused`` counts the scale/zero-point pairs taken unchanged from the parent
    bundle (``build --parent OLD.mfb``, INT8 weights only); absent when no parent
    was consulted, and then left out of the JSON so such manifests read as before.
    """

    name: str = Field(min_length=1, max_length=256)
    scale: tuple[Real, ...] = Field(min_length=1)
    zero_point: tuple[int, ...] = Field(min_length=1)
    axis: int | None = None
    reused: NonNegInt | None = Field(default=None, exclude_if=lambda value: value is None)

    @model_validator(mode="after")
    def _same_length(self) -> QuantizedTensor:
        if len(self.scale) != len(self.zero_point):
            msg = f"{len(self.scale)} scales but {len(self.zero_point)} zero points"
            raise ValueError(msg)
        if self.reused is not None and self.reused > len(self.scale):
            msg = f"reused {self.reused} of only {len(self.scale)} scales"
            raise ValueError(msg)
        return self


class Quantization(_Model):
    """How the weights are quantized; ``none`` for a float model."""

    scheme: Literal["none", "int8"]
    per_channel: bool = False
    tensors: tuple[QuantizedTensor, ...] = ()


class Preprocessing(_Model):
    """The preprocessing contract the application must apply before inference."""

    id: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=1)
    file: MemberName | None = None


class RuntimeRequirement(_Model):
    """Inference runtime and the versions that can run the model (PEP 440)."""

    name: str = Field(min_length=1, max_length=64)
    specifier: str = Field(max_length=128)

    @field_validator("specifier")
    @classmethod
    def _valid_specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            msg = f"not a PEP 440 version specifier: {value!r}"
            raise ValueError(msg) from None
        return value


class HardwareTargets(_Model):
    """What a device must be to run the bundle; empty tuples mean "any"."""

    arch: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()
    required_tags: dict[str, str] = Field(default_factory=dict)
    min_ram_bytes: NonNegInt = 0
    min_disk_bytes: NonNegInt = 0
    accelerator: str | None = None


class Head(_Model):
    """How to read the model's outputs as a classifier."""

    kind: Literal["classifier"] = "classifier"
    scores_output: str = Field(min_length=1)
    scores: Literal["probabilities", "logits"]
    label_output: str | None = None
    n_classes: int = Field(ge=2)


class Contract(_Model):
    """The interface between application, device and model."""

    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    head: Head
    quantization: Quantization
    preprocessing: Preprocessing | None = None
    labels: tuple[str, ...] | None = None
    runtime: RuntimeRequirement
    hardware: HardwareTargets = Field(default_factory=HardwareTargets)

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        outputs = {t.name for t in self.outputs}
        if self.head.scores_output not in outputs:
            msg = f"head.scores_output {self.head.scores_output!r} is not an output"
            raise ValueError(msg)
        if self.head.label_output is not None and self.head.label_output not in outputs:
            msg = f"head.label_output {self.head.label_output!r} is not an output"
            raise ValueError(msg)
        if self.labels is not None and len(self.labels) != self.head.n_classes:
            msg = f"{len(self.labels)} labels for {self.head.n_classes} classes"
            raise ValueError(msg)
        return self


class Budgets(_Model):
    """Resource budgets the device health check enforces."""

    max_latency_ms: Real | None = None
    max_ram_bytes: NonNegInt | None = None


class Calibration(_Model):
    """Calibration of the scores (for example temperature scaling)."""

    method: str = Field(min_length=1, max_length=64)
    params: dict[str, Real | tuple[Real, ...]] = Field(default_factory=dict)


class Behaviour(_Model):
    """Decision thresholds, calibration and budgets, versioned with the weights."""

    thresholds: dict[str, Real] = Field(default_factory=dict)
    calibration: Calibration | None = None
    budgets: Budgets = Field(default_factory=Budgets)
    fallback_class: NonNegInt | None = None


class Histogram(_Model):
    """Counts on fixed edges; ``counts[i]`` covers ``[edges[i], edges[i+1])``."""

    edges: tuple[Edge, ...] = Field(min_length=2)
    counts: tuple[NonNegInt, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> Histogram:
        if len(self.counts) != len(self.edges) - 1:
            msg = f"{len(self.counts)} counts for {len(self.edges)} edges (need edges - 1)"
            raise ValueError(msg)
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            msg = "histogram edges must be strictly increasing"
            raise ValueError(msg)
        return self


class FeatureHistogram(Histogram):
    """Reference histogram of one input feature (``input`` tensor, ``index`` on axis 1)."""

    input: str
    index: NonNegInt


class References(_Model):
    """The drift baseline, captured on validation data."""

    n: NonNegInt
    features: tuple[FeatureHistogram, ...]
    confidence: Histogram


class Golden(_Model):
    """Golden test vectors: inputs and expected outputs stored in ``file``."""

    file: MemberName
    count: int = Field(ge=1)
    atol: Real = Field(ge=0)
    rtol: Real = Field(ge=0)


class Parity(_Model):
    """Agreement of the quantized model with its float original."""

    agreement: Real = Field(ge=0, le=1)
    n: int = Field(ge=1)
    min_required: Real = Field(ge=0, le=1)


class Provenance(_Model):
    """Where the model came from."""

    dataset: str | None = None
    dataset_version: str | None = None
    training_config_hash: str | None = None
    code_commit: str | None = None
    builder: str | None = None
    tool: str


class Evidence(_Model):
    """What was measured on validation data when the bundle was built."""

    references: References
    golden: Golden
    metrics: dict[str, Real] = Field(default_factory=dict)
    parity: Parity | None = None
    provenance: Provenance


class FileEntry(_Model):
    """A payload member: its name, size and sha256."""

    path: MemberName
    size: NonNegInt
    sha256: Sha256


class ModelInfo(_Model):
    """Which payload member holds the weights and in what format."""

    file: MemberName
    format: Literal["onnx", "tflite", "opaque"]
    opset: int | None = None


class Manifest(_Model):
    """The signed description of one bundle."""

    format: Literal["modelfleet.bundle.v1"]
    name: str = Field(pattern=_MODEL_NAME.pattern)
    version: str
    release: int = Field(ge=0)
    created: str = Field(pattern=_TIMESTAMP.pattern)
    parent: str | None = None
    model: ModelInfo
    files: tuple[FileEntry, ...] = Field(min_length=1)
    contract: Contract
    behaviour: Behaviour
    evidence: Evidence

    @field_validator("version", "parent")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None and not _SEMVER.fullmatch(value):
            msg = f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH)"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _files_consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if paths != sorted(paths) or len(set(paths)) != len(paths):
            msg = "files must be sorted by path with no duplicates"
            raise ValueError(msg)
        reserved = RESERVED_MEMBERS.intersection(paths)
        if reserved:
            msg = f"files may not use reserved names {sorted(reserved)}"
            raise ValueError(msg)
        referenced = {"model.file": self.model.file, "evidence.golden.file": self.evidence.golden.file}
        if self.contract.preprocessing is not None and self.contract.preprocessing.file is not None:
            referenced["contract.preprocessing.file"] = self.contract.preprocessing.file
        for where, name in referenced.items():
            if name not in paths:
                msg = f"{where} names {name!r}, which is not in files"
                raise ValueError(msg)
        return self

    def file(self, path: str) -> FileEntry:
        """Return the entry for payload member ``path``."""
        for entry in self.files:
            if entry.path == path:
                return entry
        msg = f"bundle has no file {path!r}"
        raise KeyError(msg)

    @property
    def payload_bytes(self) -> int:
        """Sum of the payload members' sizes."""
        return sum(f.size for f in self.files)

    def to_bytes(self) -> bytes:
        """Return the canonical JSON bytes that are signed."""
        return canonical_bytes(self.model_dump(mode="json"))


def _error_code(error: Mapping[str, Any]) -> str:
    """Map the first pydantic error to a stable refusal code."""
    loc = tuple(error.get("loc", ()))
    if loc[:1] == ("version",) or loc[:1] == ("parent",):
        return "invalid_semver"
    if loc[:1] == ("release",):
        return "release_not_integer" if error.get("type") in {"int_type", "int_parsing"} else "invalid_release"
    if error.get("type") == "extra_forbidden":
        return "unknown_field"
    if error.get("type") == "missing":
        return "missing_field"
    return "schema"


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate canonical manifest bytes.

    Raises:
        ManifestError: the bytes are not canonical JSON or break the schema; the
            message names the field.
    """
    parse_canonical(data, what="manifest.json")
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "manifest"
        msg = f"manifest.json: {where}: {first['msg']}"
        if exc.error_count() > 1:
            msg += f" (and {exc.error_count() - 1} more)"
        raise ManifestError(msg, code=_error_code(first)) from None
