"""The device side of rollout modes: the shadow candidate off the caller's path, and the time-slice schedule."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelfleet.agent._runtime import Array
from modelfleet.telemetry import ShadowComparison

__all__ = ["ShadowJob", "ShadowRunner", "time_slice_choice"]

logger = logging.getLogger(__name__)


def time_slice_choice(device_id: str, slot: int, versions: int) -> int:
    """Which version (an index) serves time slot ``slot`` on ``device_id``.

    Each block of ``versions`` consecutive slots serves every version exactly once,
    in an order hashed from (device, block): balanced within every block,
    deterministic, and not in the same phase on every device, so time-of-day
    effects do not line up with one version.
    """
    block, position = divmod(slot, versions)
    order = sorted(range(versions), key=lambda version: _digest(device_id, block, version))
    return order[position]


def _digest(device_id: str, block: int, version: int) -> bytes:
    return hashlib.sha256(f"{device_id}\x00{block}\x00{version}".encode()).digest()


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One call's inputs (copied: the application may reuse its buffers) and the active model's answer."""

    feeds: Mapping[str, Array]
    rows: int
    features: npt.NDArray[np.float64] | None
    active: ShadowComparison
    labels: npt.NDArray[np.int64] | None


class ShadowRunner:
    """Scores shadow jobs in a background thread; a full queue skips jobs and counts them; thread-safe.

    Args:
        score: runs the candidate on one job and records the comparison.
        capacity: jobs waiting at most.
        name: how the thread is named.
    """

    def __init__(self, score: Callable[[ShadowJob], None], capacity: int, name: str) -> None:
        self._score = score
        self._jobs: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=capacity)
        self._pending = 0
        self._closed = False
        self._idle = threading.Condition()
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name=f"modelfleet-{name}-shadow", daemon=True)
        self._thread.start()

    def submit(self, job: ShadowJob) -> bool:
        """Queue a job without waiting; ``False`` (and counted as skipped) when the queue is full or closed."""
        with self._idle:
            if self._closed:
                self.skipped += 1
                return False
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                self.skipped += 1
                return False
            self._pending += 1
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every submitted job has been scored."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Skip the jobs still waiting and stop the thread (after the job in progress, if any)."""
        with self._idle:
            self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._done(skipped=True)
        self._jobs.put_nowait(None)  # room: the queue was drained and nothing is submitted once closed
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._score(job)
            except Exception:  # the shadow must never take the device down; the failure is logged
                logger.exception("scoring a shadow job failed")
            self._done(skipped=False)

    def _done(self, *, skipped: bool) -> None:
        with self._idle:
            self._pending -= 1
            self.skipped += skipped
            self._idle.notify_all()
