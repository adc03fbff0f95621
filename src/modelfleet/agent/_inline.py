"""Inference in the caller's thread, for ``RuntimeConfig(isolation="inline")``.

The worker process (:mod:`modelfleet.agent._worker`) costs an inter-process round
trip per call, 0.2 to 0.4 ms on a two-core device, a third of a small model's
inference. Inline, the caller's thread runs ONNX Runtime itself (which releases the
GIL) and a watchdog thread, waking every quarter of the time bound, sets ONNX
Runtime's ``terminate`` flag on a run that passed its bound; the run then stops at
the next operator boundary and the caller gets a ``timeout`` outcome, as from a
worker. What inline cannot do is survive a crash in native code or stop a single
operator that never returns: that is what the default ``process`` isolation is for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import onnxruntime as ort

from modelfleet.agent._runtime import Array, OnnxRuntime, RuntimeConfig, RuntimeFactory
from modelfleet.agent._scores import ScoreReader
from modelfleet.agent._worker import EventSink, Outcome, read_outcome
from modelfleet.errors import ConfigError, IncompatibleError

__all__ = ["InlineWorker"]

logger = logging.getLogger(__name__)

_MIN_TICK_S = 0.005


class _Watchdog:
    """Sets the terminate flag of every run that passed its deadline; one daemon thread per worker.

    Runs are registered without a lock: a single dict store or pop, a list ``pop`` or ``append``
    and a ``list`` of the dict's values are each atomic in CPython, and this sits on every inference.

    Run options are reused, because making one costs microseconds right after an inference has evicted
    the caches. ``end`` keeps a run's options for another run only when the run ended before its deadline:
    the watchdog reads the time before it lists the runs, so a run it can still stop was listed before
    ``end`` removed it and has a deadline at or before that reading, which comes before ``end``'s own. A
    kept options' terminate flag was never set and never will be; a late run's options are dropped.
    """

    def __init__(self, tick_s: float, name: str) -> None:
        self._runs: dict[int, tuple[float, ort.RunOptions]] = {}
        self._spare: list[ort.RunOptions] = []  # at most one per thread that ran at once
        self._stop = threading.Event()
        self._tick = max(tick_s, _MIN_TICK_S)
        self._thread = threading.Thread(target=self._watch, name=f"modelfleet-{name}-watchdog", daemon=True)
        self._thread.start()

    def begin(self, bound_s: float) -> ort.RunOptions:
        """Run options for one run, watched from now until ``end``: terminated once ``bound_s`` has passed."""
        try:
            options = self._spare.pop()
        except IndexError:
            options = ort.RunOptions()
        self._runs[id(options)] = (time.monotonic() + bound_s, options)
        return options

    def end(self, options: ort.RunOptions) -> None:
        """Stop watching the run of ``options``; keep them for another run if no terminate can reach them."""
        deadline, _ = self._runs.pop(id(options))
        if time.monotonic() < deadline:
            self._spare.append(options)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self._tick * 4)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()  # before listing the runs: what ``end`` relies on to reuse options
            late = [options for deadline, options in list(self._runs.values()) if deadline <= now]
            for options in late:
                options.terminate = True


class InlineWorker:
    """One model run in the caller's thread with a time bound; thread-safe, same calls as ``InferenceWorker``.

    Args:
        model_path: the model file.
        config: bounds (``timeout_s``, threads).
        runtime: must make an :class:`~modelfleet.agent.OnnxRuntime` (the bound needs its terminate flag).
        on_event: accepted for the same signature; an inline worker has no restarts to report.
        name: how logs and thread names call the model.
        reader: reads a one-row answer after the inference (``Outcome.row``); an answer it refuses is an
            ``error`` outcome.

    Raises:
        ConfigError: ``bad_setting`` when ``runtime`` does not make an ``OnnxRuntime``.
        IncompatibleError: ``model_load_failed`` when the model cannot be loaded.
    """

    restarts = 0
    pid = None

    def __init__(
        self,
        model_path: Path,
        config: RuntimeConfig,
        *,
        runtime: RuntimeFactory = OnnxRuntime,
        on_event: EventSink | None = None,  # noqa: ARG002 - the same signature as InferenceWorker
        name: str = "model",
        reader: ScoreReader | None = None,
    ) -> None:
        engine = runtime(config)
        if not isinstance(engine, OnnxRuntime):
            msg = f"isolation='inline' needs an OnnxRuntime (its terminate flag bounds a run), not {type(engine)}"
            raise ConfigError(msg, code="bad_setting")
        try:
            engine.load(model_path)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's load errors share no base
            msg = f"{name}: cannot load {model_path}: {type(exc).__name__}: {exc}"
            raise IncompatibleError(msg, code="model_load_failed") from None
        self._engine = engine
        self._config = config
        self._reader = reader
        self._watchdog = _Watchdog(config.timeout_s / 4, name)
        self._closed = False

    def infer(self, inputs: Mapping[str, Array], timeout_s: float | None = None) -> Outcome:
        """Run one inference; past ``timeout_s`` (plus up to a quarter of it) it is stopped. Never raises."""
        if self._closed:
            return Outcome(None, "unavailable", "the worker is closed")
        bound = self._config.timeout_s if timeout_s is None else timeout_s
        options = self._watchdog.begin(bound)
        try:
            outputs = self._engine.run(inputs, options)
        except Exception as exc:  # noqa: BLE001 - any runtime failure is an outcome, never an exception
            if options.terminate:
                return Outcome(None, "timeout", f"the inference ran longer than {bound} s and was terminated")
            return Outcome(None, "error", f"{type(exc).__name__}: {exc}")
        finally:
            self._watchdog.end(options)
        return read_outcome(outputs, inputs, self._reader)

    def wait_ready(self, timeout_s: float) -> bool:  # noqa: ARG002 - the same signature as InferenceWorker
        """Always ready once constructed (until closed)."""
        return not self._closed

    def close(self) -> None:
        """Stop the watchdog and release the model; later calls are answered ``unavailable``."""
        if self._closed:
            return
        self._closed = True
        self._watchdog.close()
        self._engine.close()
