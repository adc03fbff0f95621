"""What a started rollout wants one device to run (pure; the server's check-in asks it).

A device pin still wins over any rollout (an operator's explicit choice); the
newest started rollout whose selector matches the device decides otherwise:

==================================  ==============================================
rollout state                       version for a target device
==================================  ==============================================
lab                                 new on lab devices, baseline elsewhere
canary, awaiting_approval, paused   new if its bucket is treated at the stage, else baseline
complete                            new
rolling_back, rolled_back, aborted  baseline (the agent accepts the lower release)
==================================  ==============================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelfleet.rollout._cohort import Cohort, assign
from modelfleet.rollout._states import RolloutState
from modelfleet.store import RolloutBundle, StartedRollout, selector_matches

__all__ = ["governing_rollout", "rollout_version"]

_BASELINE_STATES = {RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK, RolloutState.ABORTED}


def governing_rollout(rollouts: Sequence[StartedRollout], model: str, tags: Mapping[str, str]) -> StartedRollout | None:
    """The newest started rollout of ``model`` whose selector matches ``tags`` (``rollouts`` newest first)."""
    for rollout in rollouts:
        if rollout.model == model and selector_matches(rollout.spec.get("selector") or {}, tags):
            return rollout
    return None


def rollout_version(rollout: StartedRollout, device_id: str, tags: Mapping[str, str]) -> RolloutBundle | None:
    """The bundle ``rollout`` assigns to the device, or None when it has no baseline to give."""
    state = RolloutState(rollout.state)
    if state is RolloutState.COMPLETE:
        return rollout.new
    if state in _BASELINE_STATES:
        return rollout.baseline
    stages = rollout.spec.get("stages") or []
    percent = float(stages[rollout.stage]["percent"]) if 0 <= rollout.stage < len(stages) else 0.0
    holdout = float(rollout.spec.get("holdout_percent", 10))
    cohort = assign(rollout.salt, device_id, tags, holdout_percent=holdout, percent=percent)
    if cohort is Cohort.TREATED or (cohort is Cohort.LAB and state is not RolloutState.PENDING):
        return rollout.new
    return rollout.baseline
