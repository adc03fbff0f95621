"""The application's Predictor built on what the agent serves: the active version and an experiment's candidate.

An application asks :meth:`Agent.serving` after each agent step and, when the
answer changed, opens a new :class:`ServedPredictor` with :func:`open_served`
(the agent collects the old Predictor's telemetry as it takes the new one) and
closes the old one. Both versions stay open (a shared lock on their
directories) while it runs, so garbage collection cannot remove them. A
candidate that cannot run beside the active version (another contract, a
model its worker cannot load) is reported through the installer and dropped;
the Predictor then runs the active version alone.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from modelfleet._closing import Closeable
from modelfleet.agent._candidate import Serving
from modelfleet.agent._predictor import InstalledVersion, Predictor
from modelfleet.agent._runtime import OnnxRuntime, RuntimeConfig, RuntimeFactory
from modelfleet.agent._slots import SlotHandle
from modelfleet.clock import Clock
from modelfleet.errors import IncompatibleError

if TYPE_CHECKING:
    from modelfleet.agent._daemon import Agent

__all__ = ["ServedPredictor", "open_served"]

logger = logging.getLogger(__name__)


class ServedPredictor(Closeable):
    """A :class:`Predictor` on one :class:`Serving`, holding its versions open; close it to release them."""

    def __init__(self, serving: Serving, predictor: Predictor, handles: list[SlotHandle]) -> None:
        """Own ``predictor`` and the ``handles`` of the versions it runs."""
        self.serving = serving
        self.predictor = predictor
        self._handles = handles

    def close(self) -> None:
        """Stop the Predictor and release its versions."""
        self.predictor.close()
        for handle in self._handles:
            handle.close()
        self._handles = []


def open_served(
    agent: Agent,
    model: str,
    *,
    config: RuntimeConfig | None = None,
    clock: Clock | None = None,
    runtime: RuntimeFactory = OnnxRuntime,
    salt: bytes | None = None,
) -> ServedPredictor | None:
    """Build a Predictor on what ``agent`` serves for ``model`` and hand it to the agent; ``None`` if nothing runs.

    In a time slice the telemetry window is cut to the schedule's slot when it does not divide it, so
    each window's summary belongs to one version's slot.
    """
    serving = agent.serving(model)
    if serving is None:
        return None
    slots = agent.installer.slots
    active = slots.open(model, serving.active)
    handles = [active]
    try:
        predictor = _build(agent, serving, active, handles, config=config, clock=clock, runtime=runtime, salt=salt)
    except BaseException:
        for handle in handles:
            handle.close()
        raise
    if predictor.mode != serving.mode:
        serving = Serving(model, serving.active)
    agent.use_predictor(predictor)
    return ServedPredictor(serving, predictor, handles)


def _build(
    agent: Agent,
    serving: Serving,
    active: SlotHandle,
    handles: list[SlotHandle],
    *,
    config: RuntimeConfig | None,
    clock: Clock | None,
    runtime: RuntimeFactory,
    salt: bytes | None,
) -> Predictor:
    """The Predictor of ``serving``; active alone when the candidate cannot run beside it (reported, dropped)."""
    config = _aligned(config or RuntimeConfig(), serving)

    def make(candidate: InstalledVersion | None) -> Predictor:
        return Predictor(
            active.manifest,
            active.model_path,
            candidate=candidate,
            mode="active" if candidate is None else serving.mode,
            time_slice=None if candidate is None else serving.time_slice,
            device_id=agent.identity.device_id,
            config=config,
            clock=clock,
            runtime=runtime,
            salt=salt,
        )

    if serving.candidate is None:
        return make(None)
    candidate = agent.installer.slots.open(serving.model, serving.candidate)
    handles.append(candidate)
    try:
        return make(InstalledVersion(candidate.manifest, candidate.model_path))
    except IncompatibleError as exc:
        logger.warning(
            "%s candidate %s cannot run beside %s: %s", serving.model, serving.candidate, serving.active, exc
        )
        agent.installer.fail_candidate(serving.model, exc.message, exc.code)
        handles.remove(candidate)
        candidate.close()
        return make(None)


def _aligned(config: RuntimeConfig, serving: Serving) -> RuntimeConfig:
    """The config with a telemetry window that divides the time-slice slot."""
    schedule = serving.time_slice
    if schedule is None or schedule.slot_seconds % config.window_seconds == 0:
        return config
    return dataclasses.replace(config, window_seconds=schedule.slot_seconds)
