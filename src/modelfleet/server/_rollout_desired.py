"""The check-in's answer with rollouts: pins first, then what each rollout assigns the device.

Started rollouts are read once per ``ttl_seconds`` per process, not on every
check-in: a decision reaches devices within that time plus their poll interval,
and a process that makes a decision itself sees it at once (:meth:`invalidate`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from modelfleet.protocol import Artifact, DesiredModel
from modelfleet.rollout import governing_rollout, rollout_version
from modelfleet.server._desired import DesiredStateResolver, artifact_url
from modelfleet.store import DeviceRecord, Pin, StartedRollout, started_rollouts

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
        self._cached: tuple[float, Sequence[StartedRollout]] | None = None

    def invalidate(self) -> None:
        """Forget the cached rollouts (after this process changed one)."""
        with self._lock:
            self._cached = None

    def _rollouts(self, connection: Connection) -> Sequence[StartedRollout]:
        now = self._monotonic()
        with self._lock:
            cached = self._cached
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        rollouts = started_rollouts(connection)
        with self._lock:
            self._cached = (now, rollouts)
        return rollouts

    def __call__(self, connection: Connection, device: DeviceRecord, public_url: str) -> list[DesiredModel]:
        """Pins' answer, with each model a matching rollout governs replaced by the rollout's version."""
        desired = {entry.model: entry for entry in self._base(connection, device, public_url)}
        rollouts = self._rollouts(connection)
        if not rollouts:
            return [desired[model] for model in sorted(desired)]
        installed = {str(entry.get("model")): entry for entry in device.installed}
        pinned: set[str] | None = None
        for model in sorted({rollout.model for rollout in rollouts}):
            rollout = governing_rollout(rollouts, model, device.tags)
            if rollout is None:
                continue
            bundle = rollout_version(rollout, device.id, device.tags)
            if bundle is None or (bundle is not rollout.new and model not in installed and model not in desired):
                continue  # nothing to give, or do not install a baseline on a device that never ran the model
            if pinned is None:
                pinned = set(connection.scalars(select(Pin.model).where(Pin.device_id == device.id)))
            if model in pinned:
                continue
            running: Any = (installed.get(model) or {}).get("release")
            desired[model] = DesiredModel(
                model=model,
                version=bundle.version,
                release=bundle.release,
                rollback=isinstance(running, int) and running > bundle.release,
                rollout_id=rollout.id,
                artifact=Artifact(url=artifact_url(public_url, bundle.sha256), sha256=bundle.sha256, size=bundle.size),
            )
        return [desired[model] for model in sorted(desired)]
