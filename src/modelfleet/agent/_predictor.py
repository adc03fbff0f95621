"""``Predictor``: what an application calls to run an installed model, in active, shadow or time-slice mode.

Every call is checked against the manifest's contract, answered under a time
bound (by a worker process, or in the caller's thread with
``RuntimeConfig(isolation="inline")``), and counted into telemetry. A call never hangs and
never gets an unflagged wrong answer: when inference fails or runs past its
bound, the caller gets the previous version's answer (if one is loaded) or the
bundle's ``fallback_class``, marked ``fallback=True`` with the reason, and the
failure is counted in the version's summary and recorded as an event.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from modelfleet._closing import Closeable
from modelfleet.agent._contract import check_inputs, check_same_contract, layout_of, score_reader
from modelfleet.agent._events import EventLog
from modelfleet.agent._inline import InlineWorker
from modelfleet.agent._modes import ShadowJob, ShadowRunner, time_slice_choice
from modelfleet.agent._runtime import Array, OnnxRuntime, RuntimeConfig, RuntimeFactory
from modelfleet.agent._scores import ScoreReader, Scores
from modelfleet.agent._worker import FailureKind, InferenceWorker, WorkerEventKind
from modelfleet.bundle import Manifest
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import IncompatibleError, ModelfleetError
from modelfleet.protocol import TimeSlice
from modelfleet.telemetry import Event, Role, ShadowComparison, Summarizer, Summary, SummaryLayout, feature_values

__all__ = ["FailureKind", "InferenceObserver", "InstalledVersion", "Mode", "Prediction", "Predictor"]

InferenceObserver = Callable[[str, str, bool], None]
"""Told ``(model, version, failed)`` after every call a version served (the agent's live health watch)."""

Mode = Literal["active", "shadow", "time_slice"]
_TIMEOUTS: frozenset[FailureKind] = frozenset({"timeout", "queue_timeout"})  # the rest count as errors
_CLOSE_S = 5.0
_MAX_SIGNATURES = 32  # input (names, dtypes, shapes) remembered as accepted; beyond it the memory starts over
Signature = tuple[tuple[object, np.dtype[np.generic], tuple[int, ...]], ...]
_BARE = object()  # the name of a bare array in a signature: no mapping key can equal it


class InstalledVersion(NamedTuple):
    """One installed version: its verified manifest and the model file extracted beside it."""

    manifest: Manifest
    model_path: Path


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer to one ``predict`` call, one entry per input row.

    Attributes:
        outputs: every output of the model that answered; empty when ``fallback_class`` answered.
        top1: the class per row.
        confidence: the top-1 probability per row; 0 when ``fallback_class`` answered.
        version: the version that answered; ``None`` when ``fallback_class`` did.
        fallback: the serving version failed and this is a fallback answer.
        reason: why the serving version failed (``None`` unless ``fallback``).
    """

    outputs: Mapping[str, Array]
    top1: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float64]
    version: str | None
    fallback: bool = False
    reason: FailureKind | None = None


class _Run(NamedTuple):
    """One version's attempt at one call (a tuple: made on every call, it costs less than a frozen dataclass)."""

    outputs: Mapping[str, Array]
    scores: Scores | None
    failure: FailureKind | None
    detail: str
    latency_ms: float


class _Version:
    """One loaded version: its manifest, its worker and (unless it only stands by) its summarizer."""

    def __init__(self, installed: InstalledVersion, role: Role | None, context: _Context) -> None:
        self.manifest = installed.manifest
        self.version = installed.manifest.version
        self.role = role
        self.layout = layout_of(self.manifest)
        self.name = f"{self.manifest.name}-{self.version}"
        self._events = context.events
        self._reader = reader = score_reader(self.manifest.contract.head)
        worker = InlineWorker if context.config.isolation == "inline" else InferenceWorker
        self.worker: InferenceWorker | InlineWorker = worker(
            installed.model_path,
            context.config,
            runtime=context.runtime,
            on_event=self._worker_event,
            name=self.name,
            reader=reader,
        )
        self.summarizer = context.summarizer(self, role)

    def run(self, feeds: Mapping[str, Array], rows: int, timeout_s: float) -> _Run:
        """Infer once under ``timeout_s`` and read the scores (a one-row answer comes read); never raises."""
        started = time.perf_counter()
        outcome = self.worker.infer(feeds, timeout_s)
        latency_ms = (time.perf_counter() - started) * 1000.0
        outputs, row = outcome.outputs, outcome.row
        if outputs is None:
            return _Run({}, None, outcome.failure, outcome.detail, latency_ms)
        if row is not None:
            return _Run(outputs, ScoreReader.scores_of(row), None, "", latency_ms)
        try:
            scores = self._reader(outputs, rows)
        except ValueError as exc:
            return _Run({}, None, "error", str(exc), latency_ms)
        return _Run(outputs, scores, None, "", latency_ms)

    def observe(
        self,
        features: npt.NDArray[np.floating[Any]] | None,
        run: _Run,
        labels: npt.NDArray[np.int64] | None,
        *,
        fallback: bool = False,
        shadow: ShadowComparison | None = None,
    ) -> None:
        """Count one run into this version's summary (if it keeps one)."""
        summarizer, scores = self.summarizer, run.scores
        if summarizer is None or features is None:
            return
        if scores is not None:
            if labels is None and shadow is None and len(features) == 1:  # the common call, in plain numbers
                confidence, top1 = scores.row or (scores.confidence.item(), scores.top1.item())
                summarizer.observe_row(features, confidence, top1, run.latency_ms, fallback=fallback)
                return
            summarizer.observe(
                features,
                scores.confidence,
                scores.top1,
                run.latency_ms,
                fallback=fallback,
                labels=labels,
                shadow=shadow,
            )
            return
        timeout = run.failure in _TIMEOUTS  # a run without scores failed
        summarizer.observe(
            features, None, None, run.latency_ms, error=not timeout, timeout=timeout, fallback=fallback, labels=labels
        )

    def score_shadow(self, job: ShadowJob, timeout_s: float) -> None:
        """Run on a shadow job and count it, with its agreement with the active answer."""
        run = self.run(job.feeds, job.rows, timeout_s)
        self.observe(job.features, run, job.labels, shadow=job.active)

    def _worker_event(self, kind: WorkerEventKind, reason: str, detail: Mapping[str, int | str | None]) -> None:
        self._events.record(kind, model=self.manifest.name, version=self.version, reason=reason, detail=detail)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every loaded version of one predictor shares."""

    config: RuntimeConfig
    clock: Clock
    runtime: RuntimeFactory
    events: EventLog
    salt: bytes
    active_version: str

    def summarizer(self, version: _Version, role: Role | None) -> Summarizer | None:
        """A summarizer for a version that serves or shadows; none for a stand-by or with telemetry off."""
        if role is None or not self.config.telemetry:
            return None
        return Summarizer(
            version.layout,
            version.manifest.name,
            version.version,
            role,
            self.clock,
            self.config.window_seconds,
            active_version=self.active_version if role == "shadow" else None,
            salt=self.salt,
        )


class Predictor(Closeable):
    """Runs an installed model for an application; thread-safe.

    Args:
        manifest: the active version's verified manifest.
        model_path: its model file.
        previous: the version before it, loaded to answer when the active one fails.
        candidate: the version under test, for the ``shadow`` and ``time_slice`` modes.
        time_slice: the schedule a time-slice experiment gives this device (from the agent's
            :meth:`~modelfleet.agent.Agent.serving`); without it slots of ``config.time_slice_seconds``
            alternate by :func:`time_slice_choice`.
        mode: ``active`` (one model answers), ``shadow`` (the candidate also runs on every input, off the
            caller's path, and only the active answer is returned), or ``time_slice`` (the active and the
            candidate answer in alternating slots of ``config.time_slice_seconds``).
        device_id: this device, for the time-slice schedule.
        config: bounds, placement and telemetry settings.
        clock: time for telemetry windows, events and the time-slice schedule.
        runtime: makes the inference runtime inside each worker (picklable).
        salt: bytes mixed into summary and event ids; random when not given.

    Raises:
        ValueError: a mode without its candidate, a candidate without a mode that uses it, or the active
            version as its own candidate.
        IncompatibleError: a candidate or previous version with another model name, inputs or classes
            (``contract_mismatch``), or a model a worker cannot load (``model_load_failed``).
        ManifestError: ``references`` when the bundle's reference features cannot be counted on.
    """

    def __init__(
        self,
        manifest: Manifest,
        model_path: Path,
        *,
        previous: InstalledVersion | None = None,
        candidate: InstalledVersion | None = None,
        mode: Mode = "active",
        time_slice: TimeSlice | None = None,
        device_id: str = "device",
        config: RuntimeConfig | None = None,
        clock: Clock | None = None,
        runtime: RuntimeFactory = OnnxRuntime,
        salt: bytes | None = None,
    ) -> None:
        _check_mode(mode, manifest, candidate)
        for role, other in (("candidate", candidate), ("previous", previous)):
            if other is not None:
                check_same_contract(manifest, other.manifest, role)
        self.mode = mode
        self._time_slice = time_slice
        self._config = config or RuntimeConfig()
        self._clock = clock or SystemClock()
        self._device_id = device_id
        salt = os.urandom(16) if salt is None else salt
        self._events = EventLog(self._clock, self._config.max_events, salt=salt)
        context = _Context(self._config, self._clock, runtime, self._events, salt, manifest.version)
        self._loaded: list[_Version] = []
        try:
            self._active = self._load(InstalledVersion(manifest, model_path), _active_role(mode), context)
            self._candidate = None if candidate is None else self._load(candidate, _candidate_role(mode), context)
            self._previous = None if previous is None else self._load(previous, None, context)
            self._check_layouts()
        except BaseException:
            self.close()
            raise
        self._shadow = self._shadow_runner()
        self._sliced = mode == "time_slice" and self._candidate is not None
        self._observer: InferenceObserver | None = None
        self._accepted: dict[Signature, int] = {}
        self._direct_features = _direct_features(self._active.layout, self._shadow is None)

    # ------------------------------------------------------------------ public

    @property
    def versions(self) -> tuple[str, ...]:
        """The loaded versions: active, then candidate and previous when loaded."""
        return tuple(version.version for version in self._loaded)

    @property
    def shadow_skipped(self) -> int:
        """Shadow comparisons skipped because the candidate fell behind."""
        return self._shadow.skipped if self._shadow is not None else 0

    @property
    def events_dropped(self) -> int:
        """Events dropped because nobody collected them in time."""
        return self._events.dropped

    def predict(
        self, inputs: Mapping[str, Array] | Array, *, label: int | Sequence[int] | Array | None = None
    ) -> Prediction:
        """Answer one call of one or more rows; a bare array is accepted for a single-input model.

        Args:
            inputs: the model's inputs by name, as the manifest's contract declares them.
            label: ground truth per row where the application knows it (negative: unknown); counted only.

        Raises:
            TypeError: an input is not a numpy array.
            ValueError: inputs or labels that break the contract (checked before any inference).
            ModelfleetError: ``no_fallback`` when inference failed and neither a previous version nor the
                bundle's ``fallback_class`` can answer (the failure is still counted and recorded).
        """
        feeds, rows = self._checked(inputs)
        labels = None if label is None else _labels(label, rows)
        serving = self._serving() if self._sliced else self._active
        run = serving.run(feeds, rows, self._config.timeout_s)
        if self._observer is not None:
            self._observer(serving.manifest.name, serving.version, run.scores is None)
        features = self._features(feeds) if self._config.telemetry else None
        if run.scores is None:
            serving.observe(features, run, labels, fallback=True)
            return self._fallback(feeds, rows, serving, run)
        serving.observe(features, run, labels)
        if self._shadow is not None:
            comparison = ShadowComparison(predicted=run.scores.top1, confidence=run.scores.confidence)
            copies = {name: np.array(array, copy=True) for name, array in feeds.items()}
            self._shadow.submit(ShadowJob(copies, rows, _as_float64(features), comparison, labels))
        return Prediction(run.outputs, run.scores.top1, run.scores.confidence, serving.version)

    def flush(self, now: datetime | None = None, *, final: bool = False) -> list[Summary]:
        """Close the telemetry windows that ended by ``now`` (all of them if ``final``) and return their summaries."""
        moment = now or self._clock.now()
        summarizers = [version.summarizer for version in self._loaded if version.summarizer is not None]
        return [summary for summarizer in summarizers for summary in summarizer.flush(moment, final=final)]

    def observe(self, observer: InferenceObserver | None) -> None:
        """Tell ``observer`` about every served call from now on (``None`` stops it); it must be quick.

        The agent uses it to watch the first live inferences of a version on trial.
        """
        self._observer = observer

    def drain_events(self) -> list[Event]:
        """Take the events raised since the last call (fallbacks, worker restarts, crash loops)."""
        return self._events.drain()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every worker is up (for example after a restart)."""
        deadline = time.monotonic() + timeout_s
        return all(v.worker.wait_ready(max(0.0, deadline - time.monotonic())) for v in self._loaded)

    def wait_shadow(self, timeout_s: float) -> bool:
        """Wait until the candidate has scored every shadow input submitted so far."""
        return self._shadow.wait_idle(timeout_s) if self._shadow is not None else True

    def close(self) -> None:
        """Stop the shadow thread and every worker; summaries can still be flushed afterwards."""
        shadow = getattr(self, "_shadow", None)
        if shadow is not None:
            shadow.close(_CLOSE_S)
        for version in self._loaded:
            version.worker.close()

    # ------------------------------------------------------------------ internals

    def _checked(self, inputs: Mapping[str, Array] | Array) -> tuple[dict[str, Array], int]:
        """The inputs by name and their row count; the contract is checked once per (names, dtypes, shapes)."""
        signature = _signature(inputs)
        rows = self._accepted.get(signature) if signature is not None else None
        if rows is None:
            feeds, rows = check_inputs(self._active.manifest.contract.inputs, self._active.layout, inputs)
            if signature is not None:
                if len(self._accepted) >= _MAX_SIGNATURES:
                    self._accepted.clear()
                self._accepted[signature] = rows
            return feeds, rows
        if isinstance(inputs, np.ndarray):
            return {self._active.manifest.contract.inputs[0].name: inputs}, rows
        return inputs if type(inputs) is dict else dict(inputs), rows

    def _features(self, feeds: Mapping[str, Array]) -> npt.NDArray[np.floating[Any]]:
        """The call's telemetry features: a single float table input as it is (the summarizer converts exactly)."""
        if self._direct_features is not None:
            array = feeds[self._direct_features]
            if array.ndim == 2 and array.dtype.kind == "f":  # noqa: PLR2004 - a [rows, features] table
                return array
        return feature_values(feeds, self._active.layout.input_order)

    def _load(self, installed: InstalledVersion, role: Role | None, context: _Context) -> _Version:
        version = _Version(installed, role, context)
        self._loaded.append(version)
        return version

    def _check_layouts(self) -> None:
        """Every version computes the same features from the same inputs, so one feature matrix serves all."""
        for version in self._loaded[1:]:
            if version.layout.input_features != self._active.layout.input_features:
                msg = f"version {version.version} references other input features than {self._active.version}"
                raise IncompatibleError(msg, code="contract_mismatch")

    def _shadow_runner(self) -> ShadowRunner | None:
        candidate, timeout_s = self._candidate, self._config.timeout_s
        if self.mode != "shadow" or candidate is None:
            return None
        return ShadowRunner(
            lambda job: candidate.score_shadow(job, timeout_s), self._config.shadow_queue, candidate.name
        )

    def _serving(self) -> _Version:
        """The version that answers now: the active one, or the time-slice schedule's pick."""
        if self.mode != "time_slice" or self._candidate is None:
            return self._active
        if self._time_slice is not None:
            return (self._active, self._candidate)[self._time_slice.version_at(self._clock.now())]
        slot = int(self._clock.now().timestamp() // self._config.time_slice_seconds)
        return (self._active, self._candidate)[time_slice_choice(self._device_id, slot, 2)]

    def _fallback(self, feeds: Mapping[str, Array], rows: int, failed: _Version, run: _Run) -> Prediction:
        """Answer for a failed version: the previous version if it can, else the bundle's fallback class."""
        prediction = self._previous_answer(feeds, rows, failed, run)
        fallback_class = failed.manifest.behaviour.fallback_class
        if prediction is None and fallback_class is not None:
            top1 = np.full(rows, fallback_class, dtype=np.int64)
            prediction = Prediction({}, top1, np.zeros(rows), None, fallback=True, reason=run.failure)
        answered_by = "nothing" if prediction is None else prediction.version or "fallback_class"
        self._events.record(
            "fallback",
            model=failed.manifest.name,
            version=failed.version,
            reason=f"{run.failure}: {run.detail}",
            detail={"answered_by": answered_by, "rows": rows, "role": failed.role, "latency_ms": run.latency_ms},
        )
        if prediction is None:
            what = f"{failed.manifest.name} {failed.version} failed ({run.failure}: {run.detail})"
            msg = f"{what}; no previous version answered and the bundle declares no fallback_class"
            raise ModelfleetError(msg, code="no_fallback")
        return prediction

    def _previous_answer(self, feeds: Mapping[str, Array], rows: int, failed: _Version, run: _Run) -> Prediction | None:
        previous = self._previous
        if previous is None or previous is failed:
            return None
        backup = previous.run(feeds, rows, self._config.fallback_timeout_s)
        if backup.scores is None:
            return None
        scores = backup.scores
        return Prediction(
            backup.outputs, scores.top1, scores.confidence, previous.version, fallback=True, reason=run.failure
        )


def _check_mode(mode: Mode, manifest: Manifest, candidate: InstalledVersion | None) -> None:
    if mode not in {"active", "shadow", "time_slice"}:
        msg = f"mode must be 'active', 'shadow' or 'time_slice', got {mode!r}"
        raise ValueError(msg)
    if (mode == "active") != (candidate is None):
        msg = f"mode {mode!r} {'takes no' if mode == 'active' else 'needs a'} candidate version"
        raise ValueError(msg)
    if candidate is not None and (candidate.manifest.name, candidate.manifest.version) == (
        manifest.name,
        manifest.version,
    ):
        msg = f"the candidate is the active version {manifest.version}"
        raise ValueError(msg)


def _signature(inputs: Mapping[str, Array] | Array) -> Signature | None:
    """What the contract check depends on: names, dtypes and shapes (``None`` when something is not an array)."""
    if isinstance(inputs, np.ndarray):
        return ((_BARE, inputs.dtype, inputs.shape),)
    if type(inputs) is not dict and not isinstance(inputs, Mapping):  # a dict skips the ABC check
        return None
    signature = []
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            return None
        signature.append((name, array.dtype, array.shape))
    return tuple(signature)


def _as_float64(features: npt.NDArray[np.floating[Any]] | None) -> npt.NDArray[np.float64] | None:
    """Features as float64 (they already are whenever a shadow job keeps them: no copy then)."""
    return None if features is None else np.asarray(features, dtype=np.float64)


def _direct_features(layout: SummaryLayout, unshared: bool) -> str | None:
    """The one input whose array can serve as its features, when the features are not kept past the call."""
    if not unshared or len(layout.input_features) != 1:
        return None
    return layout.input_features[0][0]


def _active_role(mode: Mode) -> Role:
    return "time_slice" if mode == "time_slice" else "active"


def _candidate_role(mode: Mode) -> Role:
    return "time_slice" if mode == "time_slice" else "shadow"


def _labels(label: int | Sequence[int] | Array | None, rows: int) -> npt.NDArray[np.int64] | None:
    """Ground truth as one integer per row, or ``None``."""
    if label is None:
        return None
    values = np.asarray(label)
    if values.dtype.kind not in {"i", "u"} or values.reshape(-1).shape != (rows,):
        msg = f"label must be one integer per row ({rows}), got {values.dtype}{list(values.shape)}"
        raise ValueError(msg)
    return values.reshape(-1).astype(np.int64)
