"""The health check a new version must pass after the switch, before it is committed.

It loads the model with ONNX Runtime, runs the bundle's golden vectors within their
tolerance, measures the median latency of one inference and the growth of peak
memory against the manifest's budgets. Peak memory is read from ``/proc/self/status``
(``VmHWM``) after resetting the high-water mark through ``/proc/self/clear_refs``;
where the reset is refused the check samples ``VmRSS`` instead and says so in the
measurements. :class:`LiveWatch` then judges the first N live inferences, counted by
whoever runs them (the Predictor calls :meth:`LiveWatch.observe_live`), within a
deadline: a device that serves few calls ends its trial on time, committing when the
inferences it saw were within the error allowance and at least the configured
minimum, rolling back otherwise (ADR 0005, addendum).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfleet.bundle import Manifest
from modelfleet.errors import ConfigError

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnxruntime as ort

    Array = npt.NDArray[Any]

__all__ = ["HealthPolicy", "HealthReport", "LiveVerdict", "LiveWatch", "check_health"]

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"  # proc(5): writing 5 to clear_refs resets the peak resident set size (VmHWM)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """How the health check runs.

    Attributes:
        latency_runs: single-inference runs whose median is compared with the latency budget.
        threads: ONNX Runtime intra-op threads (small: the device is busy with the old model).
        live_inferences: live inferences to watch after the checks pass (0: commit at once).
        max_live_errors: errors among them that are still a pass.
        live_deadline_s: longest the live trial lasts, from the passed checks (restarts included); then it ends
            with the inferences seen so far.
        min_live_inferences: inferences the trial must have seen by its deadline to commit; fewer roll back.
    """

    latency_runs: int = 5
    threads: int = 1
    live_inferences: int = 0
    max_live_errors: int = 0
    live_deadline_s: float = 3600.0
    min_live_inferences: int = 0

    def __post_init__(self) -> None:
        counts = (self.latency_runs >= 1, self.threads >= 1, self.live_inferences >= 0, self.max_live_errors >= 0)
        minimum = 0 <= self.min_live_inferences <= self.live_inferences
        if not all(counts) or not minimum or not (0 < self.live_deadline_s < math.inf):
            msg = f"health policy out of range: {self}"
            raise ConfigError(msg, code="bad_setting")


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The verdict of a health check, every reason it failed, and what it measured."""

    passed: bool
    reasons: tuple[str, ...]
    measurements: Mapping[str, float] = field(default_factory=dict)


def check_health(directory: Path, manifest: Manifest, policy: HealthPolicy | None = None) -> HealthReport:
    """Load the version in ``directory`` and hold it to its manifest's golden vectors and budgets."""
    policy = policy or HealthPolicy()
    if manifest.model.format != "onnx":
        return HealthReport(passed=False, reasons=(f"the health check runs ONNX models, not {manifest.model.format}",))
    memory = _PeakMemory()
    measurements: dict[str, float] = {}
    try:
        started = time.perf_counter()
        session = _session(directory / manifest.model.file, policy.threads)
        measurements["load_ms"] = (time.perf_counter() - started) * 1000
        inputs, expected = _golden(directory / manifest.evidence.golden.file)
        reasons = _golden_reasons(session, inputs, expected, manifest, measurements)
        measurements["latency_ms"] = _median_latency_ms(session, inputs, manifest, policy.latency_runs)
    except Exception as exc:  # noqa: BLE001 - ORT and numpy failures share no base; any of them fails the check
        return HealthReport(
            passed=False, reasons=(f"the model does not run: {type(exc).__name__}: {exc}",), measurements=measurements
        )
    measurements.update(memory.measure())
    reasons += _budget_reasons(manifest, measurements)
    return HealthReport(passed=not reasons, reasons=tuple(reasons), measurements=measurements)


def _session(model: Path, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort  # noqa: PLC0415 - the idle agent loop imports this module but runs no model

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def _golden(path: Path) -> tuple[dict[str, Array], dict[str, Array]]:
    """Golden inputs and expected outputs, keyed by tensor name (``input.<name>``, ``output.<name>``)."""
    import numpy as np  # noqa: PLC0415 - the idle agent loop imports this module but runs no model

    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    inputs = {key.removeprefix("input."): value for key, value in arrays.items() if key.startswith("input.")}
    outputs = {key.removeprefix("output."): value for key, value in arrays.items() if key.startswith("output.")}
    return inputs, outputs


def _golden_reasons(
    session: ort.InferenceSession,
    inputs: Mapping[str, Array],
    expected: Mapping[str, Array],
    manifest: Manifest,
    measurements: dict[str, float],
) -> list[str]:
    """Every golden output that differs beyond tolerance; the largest difference is measured."""
    import numpy as np  # noqa: PLC0415 - the idle agent loop imports this module but runs no model

    names = sorted(expected)
    actual = dict(zip(names, session.run(names, dict(inputs)), strict=True))
    golden = manifest.evidence.golden
    reasons, worst = [], 0.0
    for name in names:
        got, want = np.asarray(actual[name]), expected[name]
        if got.shape != want.shape:
            reasons.append(f"golden output {name}: shape {got.shape}, expected {want.shape}")
            continue
        if np.issubdtype(want.dtype, np.floating):
            diff = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
            worst = max(worst, diff)
            if not np.allclose(got, want, atol=golden.atol, rtol=golden.rtol):
                reasons.append(
                    f"golden output {name}: max |diff| {diff:.3g} beyond atol {golden.atol} rtol {golden.rtol}"
                )
        elif not np.array_equal(got, want):
            reasons.append(f"golden output {name}: {int(np.sum(got != want))} of {want.size} values differ")
    measurements["golden_max_abs_diff"] = worst
    return reasons


def _median_latency_ms(
    session: ort.InferenceSession, inputs: Mapping[str, Array], manifest: Manifest, runs: int
) -> float:
    """Median time of one inference on the first golden row (the whole batch when the batch size is fixed)."""
    symbolic = all(spec.shape and isinstance(spec.shape[0], str) for spec in manifest.contract.inputs)
    feeds = {name: value[:1] if symbolic else value for name, value in inputs.items()}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _budget_reasons(manifest: Manifest, measurements: Mapping[str, float]) -> list[str]:
    """Budgets of the manifest that the measurements exceed."""
    budgets = manifest.behaviour.budgets
    reasons = []
    latency = measurements["latency_ms"]
    if budgets.max_latency_ms is not None and latency > budgets.max_latency_ms:
        reasons.append(f"median latency {latency:.3g} ms exceeds the budget of {budgets.max_latency_ms:g} ms")
    growth = measurements["ram_growth_bytes"]
    if budgets.max_ram_bytes is not None and growth > budgets.max_ram_bytes:
        reasons.append(f"peak memory grew by {growth:.0f} bytes, over the budget of {budgets.max_ram_bytes} bytes")
    return reasons


class _PeakMemory:
    """Growth of this process's peak resident memory from now on."""

    def __init__(self) -> None:
        self._baseline = _status_bytes("VmRSS")
        self._exact = _reset_peak()

    def measure(self) -> dict[str, float]:
        """``ram_growth_bytes`` and whether it is an exact peak (1.0) or a sample (0.0)."""
        peak = _status_bytes("VmHWM" if self._exact else "VmRSS")
        return {"ram_growth_bytes": float(max(peak - self._baseline, 0)), "ram_peak_exact": float(self._exact)}


def _reset_peak() -> bool:
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text(_RESET_PEAK)
        return True
    return False


def _status_bytes(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes; 0 where there is no procfs."""
    with contextlib.suppress(OSError):
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return 0


class LiveVerdict(StrEnum):
    """What the first live inferences say about a new version."""

    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


class LiveWatch:
    """Counts the first ``inferences`` live inferences after a switch; thread-safe.

    Fails as soon as more than ``max_errors`` of them failed, passes once all were seen. At
    ``deadline_s`` after the trial began it ends with what it saw: passed with at least
    ``min_inferences``, failed with fewer. ``began`` is kept for the owner, who measures the time.
    """

    def __init__(
        self,
        inferences: int,
        max_errors: int = 0,
        *,
        deadline_s: float = math.inf,
        min_inferences: int = 0,
        began: float = 0.0,
    ) -> None:
        if inferences < 0 or max_errors < 0 or not 0 <= min_inferences <= inferences or not deadline_s > 0:
            msg = (
                f"need inferences >= 0, max_errors >= 0, 0 <= min_inferences <= inferences and deadline_s > 0, "
                f"got {inferences}, {max_errors}, {min_inferences}, {deadline_s}"
            )
            raise ValueError(msg)
        self.inferences = inferences
        self.max_errors = max_errors
        self.deadline_s = deadline_s
        self.min_inferences = min_inferences
        self.began = began  # when the trial began on its owner's monotonic clock
        self._seen = 0
        self._errors = 0
        self._expired = False
        self._lock = threading.Lock()

    def observe_live(self, error: bool) -> None:
        """Count one live inference (the hook the Predictor calls); later ones are ignored."""
        with self._lock:
            if self._seen < self.inferences:
                self._seen += 1
                self._errors += int(error)

    def verdict(self, elapsed_s: float = 0.0) -> LiveVerdict:
        """Failed on too many errors, passed when all were seen; at the deadline, by the minimum; pending before.

        Args:
            elapsed_s: seconds since the trial began.
        """
        with self._lock:
            if self._errors > self.max_errors:
                return LiveVerdict.FAILED
            if self._seen >= self.inferences:
                return LiveVerdict.PASSED
            if elapsed_s < self.deadline_s:
                return LiveVerdict.PENDING
            self._expired = True
            return LiveVerdict.PASSED if self._seen >= self.min_inferences else LiveVerdict.FAILED

    @property
    def seen(self) -> int:
        """Live inferences counted so far."""
        with self._lock:
            return self._seen

    @property
    def expired(self) -> bool:
        """Whether the verdict came from the deadline rather than from the inferences."""
        with self._lock:
            return self._expired

    @property
    def reason(self) -> str:
        """The counts, in words."""
        with self._lock:
            counts = (
                f"{self._errors} of the first {self._seen} live inferences failed "
                f"(at most {self.max_errors} of {self.inferences} allowed)"
            )
            if not self._expired:
                return counts
            return (
                f"the live trial reached its deadline of {self.deadline_s:g} s with {self._seen} of "
                f"{self.inferences} inferences (at least {self.min_inferences} needed); {counts}"
            )
