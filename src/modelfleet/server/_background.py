"""Background work of a server process: looks at rollouts and experiments, and the drift monitor.

Every process runs the loop; the reconciler's conditional updates make a second
process's look harmless (it finds the revision moved and decides nothing), so
any replica can stop without a decision being lost (shared/DESIGN.md §10).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import Engine

from modelfleet.clock import Clock
from modelfleet.rollout import ExperimentWatcher, Reconciler
from modelfleet.server._retrain import DriftSettings, RetrainNotifier, check_drift

__all__ = ["run_drift_checks", "run_reconciler"]

log = logging.getLogger(__name__)


async def run_reconciler(
    lookers: Sequence[Reconciler | ExperimentWatcher], interval_seconds: float, on_moved: Callable[[], None]
) -> None:
    """Look at every running rollout and experiment every ``interval_seconds`` until cancelled.

    A failed look is logged, not fatal; the next one runs on time.
    """
    while True:
        await asyncio.sleep(interval_seconds)
        for looker in lookers:
            try:
                moved = await asyncio.to_thread(looker.tick)
            except Exception:
                log.exception("a %s look failed; the next one runs in %.0f s", type(looker).__name__, interval_seconds)
                continue
            if moved:
                on_moved()


async def run_drift_checks(engine: Engine, clock: Clock, settings: DriftSettings) -> None:
    """Run the fleet drift monitor every ``settings.check_seconds`` until cancelled (blocking work in a thread)."""
    notifier = RetrainNotifier(settings)
    while True:
        await asyncio.sleep(settings.check_seconds)
        try:
            await asyncio.to_thread(check_drift, engine, clock, settings, notifier)
        except Exception:
            log.exception("a drift check failed; the next one runs in %.0f s", settings.check_seconds)
