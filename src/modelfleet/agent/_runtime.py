"""How a model runs on the device: the bounds and placement of inference, and the runtime that executes it.

:class:`Runtime` is the small base that makes the inference engine pluggable
(ONNX Runtime here; TFLite/LiteRT or a vendor SDK behind the same three calls).
A runtime lives inside a worker process, so a factory for it must be picklable:
a module-level class or function, as :class:`OnnxRuntime` is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from modelfleet.errors import ConfigError

__all__ = ["Array", "Isolation", "OnnxRuntime", "Runtime", "RuntimeConfig", "RuntimeFactory"]

Array = npt.NDArray[Any]
Isolation = Literal["process", "inline"]
"""Where inference runs: a worker process (crash-proof, killable) or the caller's thread (no IPC)."""
_MAX_NICE = 19


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig:
    """Bounds and placement of on-device inference; passed in, never read from the environment.

    A call to ``Predictor.predict`` returns within ``timeout_s`` when the bundle's
    ``fallback_class`` answers for a failed inference, and within ``timeout_s +
    fallback_timeout_s`` when a loaded previous version does.

    Attributes:
        timeout_s: longest one inference may take; past it the caller gets a fallback and the watchdog
            kills and replaces the worker.
        fallback_timeout_s: longest the previous version may take to answer for a failed inference.
        start_timeout_s: longest starting a worker and loading its model may take.
        max_queue: inferences waiting for one worker; a call beyond it is answered by the fallback at once.
        max_start_failures: failed starts in a row after which a model is reported unavailable (crash loop).
        intra_op_threads: ONNX Runtime threads inside one operator.
        cpu_affinity: CPUs the worker processes may run on (``os.sched_setaffinity``); ``None`` inherits.
        nice: niceness added to the worker processes (``os.nice``), 0 to 19.
        window_seconds: telemetry window length.
        time_slice_seconds: length of one slot of the time-slice schedule.
        shadow_queue: inputs waiting for the shadow candidate; more are skipped and counted.
        max_events: events kept for the agent to collect; beyond it the oldest are dropped and counted.
        telemetry: count every inference into summaries (on by default).
        isolation: ``process`` (default): each model in a worker process that a watchdog kills past
            ``timeout_s``, so a hang or a crash in native code never reaches the caller; ``inline``: the
            caller's thread runs ONNX Runtime directly (no inter-process round trip: 0.2-0.4 ms less per call)
            and a watchdog sets ONNX Runtime's terminate flag past ``timeout_s``, which stops the run
            between operators (not inside one, and a crash takes the process with it).
            ``cpu_affinity`` and ``nice`` apply to worker processes only.
    """

    timeout_s: float = 1.0
    fallback_timeout_s: float = 1.0
    start_timeout_s: float = 60.0
    max_queue: int = 16
    max_start_failures: int = 5
    intra_op_threads: int = 1
    cpu_affinity: frozenset[int] | None = None
    nice: int = 0
    window_seconds: int = 300
    time_slice_seconds: int = 600
    shadow_queue: int = 64
    max_events: int = 1000
    telemetry: bool = True
    isolation: Isolation = "process"

    def __post_init__(self) -> None:
        for name in ("timeout_s", "fallback_timeout_s", "start_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                _refuse(name, value, "a positive number of seconds")
        for name in ("max_queue", "max_start_failures", "intra_op_threads", "shadow_queue", "max_events"):
            if not _positive_int(getattr(self, name)):
                _refuse(name, getattr(self, name), "a positive integer")
        if not 1 <= self.window_seconds <= 86_400 or not 1 <= self.time_slice_seconds <= 86_400:  # noqa: PLR2004
            _refuse("window_seconds/time_slice_seconds", (self.window_seconds, self.time_slice_seconds), "1 to 86400")
        if not isinstance(self.nice, int) or not 0 <= self.nice <= _MAX_NICE:
            _refuse("nice", self.nice, f"an integer from 0 to {_MAX_NICE}")
        if self.isolation not in {"process", "inline"}:
            _refuse("isolation", self.isolation, "'process' or 'inline'")
        if self.cpu_affinity is not None and not (self.cpu_affinity and all(_cpu(c) for c in self.cpu_affinity)):
            _refuse("cpu_affinity", self.cpu_affinity, "a non-empty set of CPU numbers")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _cpu(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse(name: str, value: object, wanted: str) -> None:
    msg = f"runtime setting {name} must be {wanted}, got {value!r}"
    raise ConfigError(msg, code="bad_setting")


class Runtime(Protocol):
    """An inference engine for one model, used from one thread of a worker process."""

    def load(self, model_path: Path) -> None:
        """Load the model; raise if this runtime cannot run it."""
        ...

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run once and return every output by name."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


RuntimeFactory = Callable[[RuntimeConfig], Runtime]
"""Makes a runtime inside the worker process; must be picklable (a module-level class or function)."""


class OnnxRuntime:
    """ONNX Runtime on the CPU, with the configured number of intra-op threads.

    Args:
        config: the runtime settings (threads).
    """

    def __init__(self, config: RuntimeConfig) -> None:
        self._config = config
        self._session: ort.InferenceSession | None = None
        self._outputs: list[str] = []

    def load(self, model_path: Path) -> None:
        """Create the inference session (raises ONNX Runtime's error if the model cannot load)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only; failures reach the agent as outcomes anyway
        self._session = ort.InferenceSession(os.fspath(model_path), options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, Array], options: ort.RunOptions | None = None) -> dict[str, Array]:
        """Run the session once; every output comes back as a numpy array.

        ``options`` lets another thread stop the run (``options.terminate = True``).
        """
        if self._session is None:
            msg = "OnnxRuntime.run called before load"
            raise RuntimeError(msg)
        results = self._session.run(self._outputs, inputs if type(inputs) is dict else dict(inputs), options)
        if all(type(value) is np.ndarray for value in results):  # tensors, as almost every model answers
            return dict(zip(self._outputs, results, strict=True))
        return {name: np.asarray(value) for name, value in zip(self._outputs, results, strict=True)}

    def close(self) -> None:
        """Drop the session."""
        self._session = None
