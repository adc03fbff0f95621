"""The check-in's answer with rollouts and experiments: pins, then what a rollout or experiment assigns.

Started rollouts and running experiments are read once per ``ttl_seconds`` per
process, not on every check-in: a decision reaches devices within that time
plus their poll interval, and a process that makes a decision itself sees it
at once (:meth:`invalidate`). A device pin wins over both; a model has at most
one running experiment and no experiment while a rollout of it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from modelfleet.protocol import Artifact, Candidate, DesiredModel
from modelfleet.rollout import ExperimentAssignment, experiment_assignment, governing_rollout, rollout_version
from modelfleet.server._desired import DesiredStateResolver, artifact_url
from modelfleet.store import (
    DeviceRecord,
    Pin,
    RolloutBundle,
    RunningExperiment,
    StartedRollout,
    running_experiments,
    started_rollouts,
)

__all__ = ["RolloutResolver"]


class RolloutResolver:
    """A :class:`DesiredStateResolver` that lets started rollouts override the pins' answer."""

    def __init__(
        self, base: DesiredStateResolver, *, ttl_seconds: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """Wrap ``base`` (pins); cache started rollouts for ``ttl_seconds``."""
        self._base = base
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, Sequence[StartedRollout], Sequence[RunningExperiment]] | None = None

    def invalidate(self) -> None:
        """Forget the cached rollouts (after this process changed one)."""
        with self._lock:
            self._cached = None

    def _read(self, connection: Connection) -> tuple[Sequence[StartedRollout], Sequence[RunningExperiment]]:
        now = self._monotonic()
        with self._lock:
            cached = self._cached
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1], cached[2]
        rollouts, experiments = started_rollouts(connection), running_experiments(connection)
        with self._lock:
            self._cached = (now, rollouts, experiments)
        return rollouts, experiments

    def __call__(self, connection: Connection, device: DeviceRecord, public_url: str) -> list[DesiredModel]:
        """Pins' answer, with each model a rollout or experiment governs replaced by what it assigns."""
        desired = {entry.model: entry for entry in self._base(connection, device, public_url)}
        rollouts, experiments = self._read(connection)
        installed = {str(entry.get("model")): entry for entry in device.installed}
        assigned = _assignments(rollouts, experiments, device, set(installed) | set(desired))
        if assigned:
            pinned = set(connection.scalars(select(Pin.model).where(Pin.device_id == device.id)))
            for model, (assignment, rollout_id, experiment_id) in assigned.items():
                if model in pinned:
                    continue  # an operator's pin for this very device wins
                running: Any = (installed.get(model) or {}).get("release")
                bundle = assignment.bundle
                desired[model] = DesiredModel(
                    model=model,
                    version=bundle.version,
                    release=bundle.release,
                    mode=assignment.mode,
                    rollback=isinstance(running, int) and running > bundle.release,
                    rollout_id=rollout_id,
                    experiment_id=experiment_id,
                    artifact=_artifact(public_url, bundle),
                    candidate=_candidate(public_url, assignment),
                )
        return [desired[model] for model in sorted(desired)]


_Assignment = tuple[ExperimentAssignment, str | None, str | None]


def _candidate(public_url: str, assignment: ExperimentAssignment) -> Candidate | None:
    """The version a shadow or time slice runs beside the active one, with the device's schedule."""
    bundle = assignment.candidate
    if bundle is None:
        return None
    return Candidate(
        version=bundle.version,
        release=bundle.release,
        artifact=_artifact(public_url, bundle),
        time_slice=assignment.time_slice,
    )


def _assignments(
    rollouts: Sequence[StartedRollout], experiments: Sequence[RunningExperiment], device: DeviceRecord, known: set[str]
) -> dict[str, _Assignment]:
    """Per model: the bundle a rollout or experiment assigns the device, with the rollout or experiment id."""
    assigned: dict[str, _Assignment] = {}
    for model in sorted({rollout.model for rollout in rollouts}):
        rollout = governing_rollout(rollouts, model, device.tags)
        bundle = rollout_version(rollout, device.id, device.tags) if rollout is not None else None
        if rollout is None or bundle is None:
            continue
        if bundle is not rollout.new and model not in known:
            continue  # do not install a baseline on a device that never ran the model
        assigned[model] = (ExperimentAssignment(bundle), rollout.id, None)
    reported = {str(entry.get("model")): entry for entry in device.installed}
    for experiment in experiments:
        assignment = experiment_assignment(experiment, device.id, device.tags, reported.get(experiment.model))
        if assignment is not None:
            assigned[experiment.model] = (assignment, None, experiment.id)
    return assigned


def _artifact(public_url: str, bundle: RolloutBundle) -> Artifact:
    return Artifact(url=artifact_url(public_url, bundle.sha256), sha256=bundle.sha256, size=bundle.size)
