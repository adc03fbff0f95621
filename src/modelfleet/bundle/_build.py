"""``bundle build``: derive the contract from the model, measure the evidence, sign and write.

The steps (DESIGN §3): check the options; stage a private copy of the model and
read its contract; fit the validation set to it; score it with the float model;
optionally quantize to INT8 and refuse below the parity bound; compute reference
histograms, metrics and golden vectors with the model that ships; hash, sign and
write the bundle atomically. Intermediate files live in a temporary directory
that is removed whatever happens, so OUT is either complete or untouched.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelfleet.bundle._golden import GOLDEN_MEMBER, write_golden
from modelfleet.bundle._inference import Array, Session, batch_rows, evenly_spaced, fixed_batch
from modelfleet.bundle._manifest import (
    BUNDLE_FORMAT,
    Contract,
    Evidence,
    Golden,
    Head,
    Manifest,
    ModelInfo,
    Parity,
    Preprocessing,
    Quantization,
    References,
    RuntimeRequirement,
)
from modelfleet.bundle._metrics import evaluation_metrics
from modelfleet.bundle._onnx_graph import ModelGraph, inspect_model
from modelfleet.bundle._options import (
    BuildOptions,
    behaviour_of,
    check_classes,
    check_options,
    check_parent,
    distinct_signers,
    provenance_of,
    runtime_of,
    validated,
)
from modelfleet.bundle._parent import ParentBundle, load_parent
from modelfleet.bundle._payload import PREPROCESS_MEMBER, hash_payload, sign_and_write, stage_model, stage_preprocess
from modelfleet.bundle._quantize import check_parity, quantize_int8
from modelfleet.bundle._reference import confidence_histogram, feature_histograms
from modelfleet.bundle._scale_reuse import ReuseBounds
from modelfleet.bundle._scores import HeadOutputs, Scores, choose_head, score_rows
from modelfleet.bundle._signing import SigningKey
from modelfleet.bundle._validation import ValidationSet, bind_inputs, check_labels
from modelfleet.clock import Clock, SystemClock, format_timestamp
from modelfleet.config import BundleLimits
from modelfleet.errors import ParityError

__all__ = ["BuildOptions", "BuildProgress", "build_bundle"]

MODEL_MEMBER = "model.onnx"


class BuildProgress(Protocol):
    """Told how far a long step got: ``step`` names it, ``done`` of ``total`` units.

    Positional-only, so any ``Callable[[str, int, int], None]`` (a progress bar's
    callback) qualifies whatever its parameters are called.
    """

    def __call__(self, step: str, done: int, total: int, /) -> None:
        """Report progress."""


def _no_progress(step: str, done: int, total: int, /) -> None:
    """Progress sink for callers that do not watch."""


@dataclass(frozen=True, slots=True)
class _Job:
    """One build: its options, scratch directory, progress sink, bundle limits and parent bundle."""

    options: BuildOptions
    work: Path
    report: BuildProgress
    limits: BundleLimits
    parent: ParentBundle | None = None

    def step(self, name: str) -> Callable[[int, int], None]:
        """Return a ``(done, total)`` reporter for step ``name``."""
        return functools.partial(self.report, name)


@dataclass(frozen=True, slots=True)
class _Batching:
    """How the model is fed: rows per run, and the fixed batch size row counts must be a multiple of."""

    rows: int
    multiple: int


@dataclass(frozen=True, slots=True)
class _Shipped:
    """The model that goes into the bundle, its session and its scores on the validation set."""

    model: Path
    session: Session
    scores: Scores
    quantization: Quantization
    parity: Parity | None = None


@dataclass(frozen=True, slots=True)
class _Measured:
    """Everything the validation set told about the model that ships."""

    model: Path
    head: Head
    quantization: Quantization
    parity: Parity | None
    references: References
    metrics: dict[str, float]
    golden: Golden


def build_bundle(
    model: Path,
    validation: ValidationSet,
    keys: Sequence[SigningKey],
    out: Path,
    options: BuildOptions,
    *,
    clock: Clock | None = None,
    progress: BuildProgress | None = None,
    limits: BundleLimits | None = None,
) -> Manifest:
    """Build, sign and atomically write the bundle ``out`` for the ONNX ``model``.

    An existing ``out`` is replaced only once the new bundle is complete. Progress
    steps: ``evaluate``, ``quantize``, ``parity`` (INT8 only), ``golden``, ``hash``, ``write``.

    Returns:
        The signed manifest.

    Raises:
        BuildError: bad options or model (codes such as ``bad_model``, ``invalid_semver``, ``labels``);
            a parent bundle that cannot be read (``bad_parent``), is not this model's predecessor
            (``parent_mismatch``) or has another weight layout (``parent_layout``).
        ValidationSetError: the validation set does not fit the model's contract.
        ParityError: the INT8 model disagrees with the float model too often.
    """
    limits = limits or BundleLimits()
    signers = distinct_signers(keys, limits)
    check_options(options, out)
    behaviour = behaviour_of(options)
    with tempfile.TemporaryDirectory(prefix="modelfleet-build-") as temp:
        parent = _parent_of(options, Path(temp), limits)
        job = _Job(options, Path(temp), progress or _no_progress, limits, parent)
        payload, preprocessing = _staged_preprocess(job)
        source = stage_model(model, job.work / "float.onnx", limits.chunk_bytes)
        graph = inspect_model(source, shown_as=str(model))
        measured = _measure(job, source, graph, validation)
        payload |= {MODEL_MEMBER: measured.model, GOLDEN_MEMBER: job.work / GOLDEN_MEMBER}
        shipped = inspect_model(measured.model, shown_as=str(model))
        files = hash_payload(payload, limits, job.step("hash"))
        manifest = validated(
            Manifest,
            "manifest",
            format=BUNDLE_FORMAT,
            name=options.name,
            version=options.version,
            release=options.release,
            created=format_timestamp((clock or SystemClock()).now()),
            parent=parent.manifest.version if parent is not None else options.parent,
            model=ModelInfo(file=MODEL_MEMBER, format="onnx", opset=shipped.opset),
            files=files,
            contract=_contract(job, graph, measured, preprocessing, runtime_of(options, shipped)),
            behaviour=behaviour,
            evidence=_evidence(job, measured),
        )
        job.report("write", 0, 1)
        sign_and_write(out, manifest, signers, payload, limits)
        job.report("write", 1, 1)
    return manifest


def _parent_of(options: BuildOptions, work: Path, limits: BundleLimits) -> ParentBundle | None:
    """Read and check ``options.parent_bundle``, if any, before any expensive step."""
    if options.parent_bundle is None:
        return None
    parent = load_parent(options.parent_bundle, work, limits)
    check_parent(options, parent.manifest, str(options.parent_bundle))
    return parent


def _staged_preprocess(job: _Job) -> tuple[dict[str, Path], Preprocessing | None]:
    """Stage the preprocessing spec, if any; return the payload so far and the contract entry."""
    if job.options.preprocess is None:
        return {}, None
    dest = job.work / PREPROCESS_MEMBER
    return {PREPROCESS_MEMBER: dest}, stage_preprocess(job.options.preprocess, dest)


# ------------------------------------------------------------------ measuring


def _measure(job: _Job, source: Path, graph: ModelGraph, validation: ValidationSet) -> _Measured:
    """Score the validation set, quantize if asked, and collect the evidence of the model that ships."""
    inputs = bind_inputs(validation, graph.inputs)
    features = feature_histograms(graph.inputs, inputs, job.options.feature_bins)
    outputs = choose_head(graph.outputs, job.options.scores_output)
    batching = _Batching(rows=batch_rows(graph.inputs, inputs), multiple=fixed_batch(graph.inputs) or 1)
    session = Session(source, "the model")
    float_scores = score_rows(session, inputs, outputs.scores.name, batching.rows, job.step("evaluate"))
    check_classes(job.options, float_scores.n_classes)
    truth = _labels(validation, float_scores)
    shipped = _Shipped(source, session, float_scores, Quantization(scheme="none"))
    if job.options.quantize == "int8":
        shipped = _quantized(job, source, inputs, float_scores, outputs.scores.name, batching)
    confidence = shipped.scores.confidence(float_scores.kind)
    bins = job.options.confidence_bins
    return _Measured(
        model=shipped.model,
        head=_head(outputs, float_scores),
        quantization=shipped.quantization,
        parity=shipped.parity,
        references=References(n=len(confidence), features=features, confidence=confidence_histogram(confidence, bins)),
        metrics=evaluation_metrics(confidence, shipped.scores.top1, truth, bins),
        golden=_golden(job, shipped.session, inputs, batching),
    )


def _labels(validation: ValidationSet, scores: Scores) -> Array | None:
    if validation.labels is None:
        return None
    return check_labels(validation.labels, len(scores.top1), scores.n_classes)


def _head(outputs: HeadOutputs, float_scores: Scores) -> Head:
    """Read the scores as the float model produces them; quantization does not change their meaning."""
    return Head(
        scores_output=outputs.scores.name,
        scores=float_scores.kind,
        label_output=outputs.label.name if outputs.label is not None else None,
        n_classes=float_scores.n_classes,
    )


def _quantized(  # noqa: PLR0917 - one call site, every argument a different stage's result
    job: _Job,
    source: Path,
    inputs: Mapping[str, Array],
    float_scores: Scores,
    scores_output: str,
    batching: _Batching,
) -> _Shipped:
    """Quantize to INT8, score the result on the same rows and check its parity with the float model."""
    model = job.work / "int8.onnx"
    quantization = quantize_int8(
        source,
        model,
        inputs,
        per_channel=job.options.per_channel,
        rows=batching.rows,
        multiple=batching.multiple,
        progress=job.step("quantize"),
        parent=job.parent,
        bounds=ReuseBounds(job.options.parent_max_clip, job.options.parent_max_coarsening),
    )
    session = Session(model, "the INT8 model")
    scores = score_rows(session, inputs, scores_output, batching.rows, job.step("parity"))
    parity = _parity(job, float_scores, scores, quantization)
    return _Shipped(model, session, scores, quantization, parity)


def _parity(job: _Job, float_scores: Scores, int8_scores: Scores, quantization: Quantization) -> Parity:
    """Check parity; a refusal of a build that kept a parent's scales says so, and how to loosen that."""
    try:
        return check_parity(float_scores.top1, int8_scores.top1, job.options.min_parity)
    except ParityError as refused:
        if job.parent is None:
            raise
        kept = sum(1 for tensor in quantization.tensors if tensor.reused)
        msg = (
            f"{refused.message}; {kept} weight(s) kept scales of parent {job.parent.manifest.version}: "
            "tighten --parent-max-clip / --parent-max-coarsening or build without the parent bundle"
        )
        raise ParityError(msg, code=refused.code) from None


def _golden(job: _Job, session: Session, inputs: Mapping[str, Array], batching: _Batching) -> Golden:
    rows = len(next(iter(inputs.values())))
    indices = evenly_spaced(rows, job.options.golden_count, batching.multiple)
    job.report("golden", 0, 1)
    write_golden(session, inputs, indices, batching.rows, job.work / GOLDEN_MEMBER)
    job.report("golden", 1, 1)
    return Golden(file=GOLDEN_MEMBER, count=len(indices), atol=job.options.golden_atol, rtol=job.options.golden_rtol)


# ------------------------------------------------------------------ assembling


def _contract(
    job: _Job, graph: ModelGraph, measured: _Measured, preprocessing: Preprocessing | None, runtime: RuntimeRequirement
) -> Contract:
    labels = job.options.labels
    return validated(
        Contract,
        "contract",
        inputs=graph.inputs,
        outputs=graph.outputs,
        head=measured.head,
        quantization=measured.quantization,
        preprocessing=preprocessing,
        labels=tuple(labels) if labels is not None else None,
        runtime=runtime,
        hardware=job.options.hardware,
    )


def _evidence(job: _Job, measured: _Measured) -> Evidence:
    return validated(
        Evidence,
        "evidence",
        references=measured.references,
        golden=measured.golden,
        metrics=measured.metrics,
        parity=measured.parity,
        provenance=provenance_of(job.options),
    )
