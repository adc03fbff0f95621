"""Build options and their checks, made before any expensive step.

Options are typed by a person (CLI flags, a notebook), so every refusal names the
option and what would be accepted; the manifest schema has the last word, and its
refusals are translated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import onnxruntime as ort
from packaging.version import Version
from pydantic import BaseModel, ValidationError

from modelfleet import __version__
from modelfleet.bundle._manifest import (
    _MODEL_NAME,
    _SEMVER,
    Behaviour,
    Budgets,
    Calibration,
    HardwareTargets,
    Manifest,
    Provenance,
    RuntimeRequirement,
    _error_code,
)
from modelfleet.bundle._onnx_graph import ModelGraph
from modelfleet.bundle._signing import SigningKey
from modelfleet.config import BundleLimits
from modelfleet.errors import BuildError

__all__ = [
    "BuildOptions",
    "behaviour_of",
    "check_classes",
    "check_options",
    "check_parent",
    "distinct_signers",
    "provenance_of",
    "runtime_of",
    "validated",
]

_Schema = TypeVar("_Schema", bound=BaseModel)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    """What ``bundle build`` cannot read from the model or the validation set.

    Attributes:
        name: model name (lowercase, digits, ``._-``).
        version: semantic version of this bundle.
        release: monotonic integer per model; devices refuse to go below it.
        parent: semantic version this bundle replaces.
        parent_bundle: the bundle this one replaces; its version becomes ``parent`` and, with
            ``quantize="int8"``, its INT8 weight scales and zero points are kept wherever the new
            weights fit them, so unchanged weights keep their bytes (smaller deltas).
        parent_max_clip: keep a parent's scale only if the new weights need at most this much more
            range (0.01: the largest weight is clipped by at most 1% of the range).
        parent_max_coarsening: keep a parent's scale only if it is at most this much coarser than a
            fresh one (0.05: at most 5% more rounding noise).
        quantize: ``"int8"`` quantizes with ONNX Runtime (static, QDQ); ``"none"`` ships the model as given.
        per_channel: per-channel INT8 weight scales instead of one per tensor.
        min_parity: refuse an INT8 model whose top-1 agreement with the float model is lower (0..1).
        thresholds: decision thresholds, versioned with the weights.
        calibration: score calibration, versioned with the weights.
        preprocess: JSON file with at least ``id`` (str) and ``version`` (int >= 1), shipped
            verbatim as ``preprocess.json``.
        labels: class names, one per score column.
        max_latency_ms: latency budget the device health check enforces.
        max_ram_bytes: peak memory budget the device health check enforces.
        runtime_specifier: onnxruntime versions that can run the model; default ``>=MAJOR.MINOR``
            of the onnxruntime that built it.
        hardware: what a device must be.
        fallback_class: the answer when inference fails; a class index.
        scores_output: the output holding class scores; found automatically when only one fits.
        golden_count: golden vectors to store (evenly spaced validation rows).
        golden_atol: absolute tolerance of golden outputs on the device.
        golden_rtol: relative tolerance of golden outputs on the device.
        feature_bins: bins per input feature reference histogram (fewer for discrete features).
        confidence_bins: equal-width bins of the confidence histogram and of the ECE.
        dataset: provenance: dataset name.
        dataset_version: provenance: dataset version.
        training_config_hash: provenance: hash of the training configuration.
        code_commit: provenance: commit of the training code.
        builder: provenance: who or what built the bundle.
    """

    name: str
    version: str
    release: int
    parent: str | None = None
    parent_bundle: Path | None = None
    parent_max_clip: float = 0.01
    parent_max_coarsening: float = 0.05
    quantize: Literal["none", "int8"] = "none"
    per_channel: bool = False
    min_parity: float = 0.98
    thresholds: Mapping[str, float] = field(default_factory=dict)
    calibration: Calibration | None = None
    preprocess: Path | None = None
    labels: tuple[str, ...] | None = None
    max_latency_ms: float | None = None
    max_ram_bytes: int | None = None
    runtime_specifier: str | None = None
    hardware: HardwareTargets = field(default_factory=HardwareTargets)
    fallback_class: int | None = None
    scores_output: str | None = None
    golden_count: int = 16
    golden_atol: float = 1e-4
    golden_rtol: float = 1e-3
    feature_bins: int = 10
    confidence_bins: int = 20
    dataset: str | None = None
    dataset_version: str | None = None
    training_config_hash: str | None = None
    code_commit: str | None = None
    builder: str | None = None


def validated(schema: type[_Schema], where: str, **fields: object) -> _Schema:
    """Build a schema object; a refusal becomes ``BuildError`` naming the field and the rule."""
    try:
        return schema(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in (where, *first["loc"]))
        msg = f"{location}: {first['msg']}"
        raise BuildError(msg, code=_error_code(first)) from None


def check_options(options: BuildOptions, out: Path) -> None:
    """Refuse identity, numeric and output options that can never produce a bundle.

    Raises:
        BuildError: ``invalid_name``, ``invalid_semver``, ``invalid_release``,
            ``bad_option`` or ``bad_output``.
    """
    _check_identity(options)
    _check_numbers(options)
    if out.is_dir():
        msg = f"output {out} is a directory; give the path of the .mfb to write"
        raise BuildError(msg, code="bad_output")


def _check_identity(options: BuildOptions) -> None:
    if not _MODEL_NAME.fullmatch(options.name):
        msg = f"name {options.name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', starting alphanumeric"
        raise BuildError(msg, code="invalid_name")
    for what, value in (("version", options.version), ("parent", options.parent)):
        if value is not None and not _SEMVER.fullmatch(value):
            msg = f"{what} {value!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)"
            raise BuildError(msg, code="invalid_semver")
    if isinstance(options.release, bool) or not isinstance(options.release, int) or options.release < 0:
        msg = f"release must be a non-negative integer, got {options.release!r}"
        raise BuildError(msg, code="invalid_release")


def _check_numbers(options: BuildOptions) -> None:
    tolerances = (options.golden_atol, options.golden_rtol)
    reuse_bounds = (options.parent_max_clip, options.parent_max_coarsening)
    problems = {
        f"quantize must be 'none' or 'int8', got {options.quantize!r}": options.quantize not in {"none", "int8"},
        f"min_parity must be between 0 and 1, got {options.min_parity}": not 0.0 <= options.min_parity <= 1.0,
        f"golden_count must be at least 1, got {options.golden_count}": options.golden_count < 1,
        f"feature_bins must be at least 1, got {options.feature_bins}": options.feature_bins < 1,
        f"confidence_bins must be at least 1, got {options.confidence_bins}": options.confidence_bins < 1,
        f"golden tolerances must be finite and >= 0, got {tolerances}": not all(
            math.isfinite(tol) and tol >= 0 for tol in tolerances
        ),
        f"parent_max_clip and parent_max_coarsening must be finite and >= 0, got {reuse_bounds}": not all(
            math.isfinite(bound) and bound >= 0 for bound in reuse_bounds
        ),
    }
    for message, broken in problems.items():
        if broken:
            raise BuildError(message, code="bad_option")


def check_parent(options: BuildOptions, parent: Manifest, shown_as: str) -> None:
    """Refuse a parent bundle that this bundle cannot replace, or whose INT8 layout it cannot keep.

    Raises:
        BuildError: ``parent_mismatch`` (another model, the same or a later release, or a
            ``parent`` version that disagrees) or ``parent_layout`` (per-tensor vs per-channel).
    """
    where = f"parent bundle {shown_as} ({parent.name} {parent.version}, release {parent.release})"
    mismatches = {
        f"{where} is another model than {options.name!r}": parent.name != options.name,
        f"{where} has this bundle's own version": parent.version == options.version,
        f"{where} is a later release than {options.release}": parent.release > options.release,
        f"{where} disagrees with parent {options.parent!r}": options.parent not in {None, parent.version},
    }
    for message, broken in mismatches.items():
        if broken:
            raise BuildError(message, code="parent_mismatch")
    old = parent.contract.quantization
    if options.quantize == "int8" and old.scheme == "int8" and old.per_channel != options.per_channel:
        granularity = {True: "per channel", False: "per tensor"}
        msg = (
            f"{where} quantized its weights {granularity[old.per_channel]}; its scales can only be kept by a "
            f"build that quantizes {granularity[old.per_channel]} too (this one: {granularity[options.per_channel]})"
        )
        raise BuildError(msg, code="parent_layout")


def behaviour_of(options: BuildOptions) -> Behaviour:
    """Thresholds, calibration, budgets and fallback as the manifest carries them.

    Raises:
        BuildError: a value breaks the schema (for example a NaN threshold).
    """
    budgets = validated(Budgets, "budgets", max_latency_ms=options.max_latency_ms, max_ram_bytes=options.max_ram_bytes)
    return validated(
        Behaviour,
        "behaviour",
        thresholds=dict(options.thresholds),
        calibration=options.calibration,
        budgets=budgets,
        fallback_class=options.fallback_class,
    )


# The first onnxruntime release that implements each ONNX opset, ONNX-ML opset and
# IR version (onnxruntime docs/Versioning.md). Anything newer than these tables
# falls back to the release doing the build: conservative, never wrong.
_ORT_FOR_OPSET = {7: (1, 0), 11: (1, 0), 12: (1, 3), 13: (1, 6), 14: (1, 8), 15: (1, 10), 16: (1, 11), 17: (1, 13),
                  18: (1, 14), 19: (1, 16), 20: (1, 17), 21: (1, 20)}  # fmt: skip
_ORT_FOR_ML_OPSET = {1: (1, 0), 2: (1, 0), 3: (1, 11)}
_ORT_FOR_IR = {3: (1, 0), 6: (1, 0), 7: (1, 3), 8: (1, 10), 9: (1, 15), 10: (1, 18)}


def _first_release(
    table: dict[int, tuple[int, int]], version: int | None, fallback: tuple[int, int]
) -> tuple[int, int]:
    if version is None:
        return (1, 0)
    known = [release for level, release in table.items() if level >= version]
    return min(known) if known else fallback


def runtime_of(options: BuildOptions, graph: ModelGraph) -> RuntimeRequirement:
    """The runtime requirement: the option, or the oldest onnxruntime that can load the model.

    The oldest release is read from the model's opset, ONNX-ML opset and IR version, so
    a bundle built with today's runtime still installs on a device a few releases behind.
    """
    built = Version(ort.__version__)
    fallback = (built.major, built.minor)
    oldest = max(
        _first_release(_ORT_FOR_OPSET, graph.opset, fallback),
        _first_release(_ORT_FOR_ML_OPSET, graph.ml_opset, fallback),
        _first_release(_ORT_FOR_IR, graph.ir_version or None, fallback),
    )
    specifier = options.runtime_specifier or f">={oldest[0]}.{oldest[1]}"
    return validated(RuntimeRequirement, "runtime", name="onnxruntime", specifier=specifier)


def provenance_of(options: BuildOptions) -> Provenance:
    """Where the model came from, and which modelfleet built the bundle."""
    return validated(
        Provenance,
        "provenance",
        dataset=options.dataset,
        dataset_version=options.dataset_version,
        training_config_hash=options.training_config_hash,
        code_commit=options.code_commit,
        builder=options.builder,
        tool=f"modelfleet {__version__}",
    )


def check_classes(options: BuildOptions, n_classes: int) -> None:
    """Refuse options that name classes the model does not have.

    Raises:
        BuildError: ``labels`` (count differs) or ``fallback_class`` (out of range).
    """
    if options.labels is not None and len(options.labels) != n_classes:
        msg = f"{len(options.labels)} labels given, but the model scores {n_classes} classes"
        raise BuildError(msg, code="labels")
    if options.fallback_class is not None and not 0 <= options.fallback_class < n_classes:
        msg = f"fallback_class {options.fallback_class} is not a class of this model (0..{n_classes - 1})"
        raise BuildError(msg, code="fallback_class")


def distinct_signers(keys: Sequence[SigningKey], limits: BundleLimits) -> list[SigningKey]:
    """Distinct keys in order: a key that signs twice would still count once on a device.

    Raises:
        BuildError: ``no_signing_key``, or ``bad_option`` above ``limits.max_signatures``.
    """
    distinct = list({key.public.keyid: key for key in keys}.values())
    if not distinct:
        raise BuildError("a bundle needs at least one signing key", code="no_signing_key")
    if len(distinct) > limits.max_signatures:
        msg = f"{len(distinct)} signing keys; readers accept at most {limits.max_signatures} signatures"
        raise BuildError(msg, code="bad_option")
    return distinct
