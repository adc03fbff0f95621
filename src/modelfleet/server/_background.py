"""Background work of a server process: the rollout reconciler's looks on the server clock.

Every process runs the loop; the reconciler's conditional updates make a second
process's look harmless (it finds the revision moved and decides nothing), so
any replica can stop without a decision being lost (shared/DESIGN.md §10).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modelfleet.rollout import Reconciler

__all__ = ["run_reconciler"]

log = logging.getLogger(__name__)


async def run_reconciler(reconciler: Reconciler, interval_seconds: float, on_moved: Callable[[], None]) -> None:
    """Look at every running rollout every ``interval_seconds`` until cancelled; a failed look is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            moved = await asyncio.to_thread(reconciler.tick)
        except Exception:
            log.exception("a reconciler look failed; the next one runs in %.0f s", interval_seconds)
            continue
        if moved:
            on_moved()
