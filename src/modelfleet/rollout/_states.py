"""The rollout lifecycle as one declared transition table (shared/DESIGN.md §6, STYLE.md habit 4).

::

    pending ─start─▶ lab ─lab_passed─▶ canary[0] ─promote─▶ canary[1] … ─promote─▶ complete
                 └──────start───────▶ canary[0]      │            ▲
                                                     └─promote─▶ awaiting_approval ─approve─┘
    lab | canary | awaiting_approval ─pause─▶ paused ─resume─▶ (where it paused)
    lab | canary | awaiting_approval | paused | complete ─rollback─▶ rolling_back ─rollback_done─▶ rolled_back
    pending | lab | canary | awaiting_approval | paused ─abort─▶ aborted

``stage`` is the index of the stage whose share is treated (-1 before the first
canary stage). :func:`transition` is pure: it takes the rollout's position and
an event and returns the next position, or raises if the event is not allowed
there, so a decision can never be applied to a state it was not made for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ACTIVE", "TERMINAL", "Event", "Position", "RolloutState", "transition"]


class RolloutState(enum.StrEnum):
    """Where a rollout is."""

    PENDING = "pending"
    LAB = "lab"
    CANARY = "canary"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    COMPLETE = "complete"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


class Event(enum.StrEnum):
    """What moves a rollout: the reconciler's decisions and the operators' commands."""

    START = "start"
    LAB_PASSED = "lab_passed"
    PROMOTE = "promote"
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    ROLLBACK = "rollback"
    ROLLBACK_DONE = "rollback_done"
    ABORT = "abort"


ACTIVE = frozenset({RolloutState.LAB, RolloutState.CANARY, RolloutState.AWAITING_APPROVAL})
"""States in which the reconciler evaluates gates and triggers."""
TERMINAL = frozenset({RolloutState.COMPLETE, RolloutState.ROLLED_BACK, RolloutState.ABORTED})
"""States no event leaves, except a fleet-wide rollback of a complete rollout."""


@dataclass(frozen=True, slots=True)
class Position:
    """A rollout's state, its stage index and, when paused, where to resume."""

    state: RolloutState
    stage: int = -1
    resume: RolloutState | None = None


_S = RolloutState
_TABLE: dict[tuple[RolloutState, Event], tuple[RolloutState, ...]] = {
    # (state, event) -> the states it may lead to; which one is chosen below
    (_S.PENDING, Event.START): (_S.LAB, _S.CANARY),
    (_S.LAB, Event.LAB_PASSED): (_S.CANARY, _S.AWAITING_APPROVAL),
    (_S.CANARY, Event.PROMOTE): (_S.CANARY, _S.AWAITING_APPROVAL, _S.COMPLETE),
    (_S.AWAITING_APPROVAL, Event.APPROVE): (_S.CANARY,),
    **{(state, Event.PAUSE): (_S.PAUSED,) for state in ACTIVE},
    (_S.PAUSED, Event.RESUME): tuple(ACTIVE),
    **{(state, Event.ROLLBACK): (_S.ROLLING_BACK,) for state in (*ACTIVE, _S.PAUSED, _S.COMPLETE)},
    (_S.ROLLING_BACK, Event.ROLLBACK_DONE): (_S.ROLLED_BACK,),
    **{(state, Event.ABORT): (_S.ABORTED,) for state in (_S.PENDING, *ACTIVE, _S.PAUSED)},
}


def transition(position: Position, event: Event, *, has_lab: bool, approvals: tuple[bool, ...]) -> Position:
    """The position after ``event``.

    Args:
        position: where the rollout is.
        event: what happened.
        has_lab: whether the spec has a lab stage 0.
        approvals: per canary stage, whether widening to it needs a human approval.

    Raises:
        ValueError: the event is not allowed in this state.
    """
    allowed = _TABLE.get((position.state, event))
    if allowed is None:
        msg = f"{event.value!r} is not allowed while the rollout is {position.state.value}"
        raise ValueError(msg)
    following = _next(position, event, has_lab=has_lab, approvals=approvals)
    if following.state not in allowed:  # the table is the contract; _next must stay inside it
        msg = f"internal error: {position} --{event.value}--> {following} is not in the table"
        raise RuntimeError(msg)
    return following


def _widen(stage: int, approvals: tuple[bool, ...]) -> Position:
    """Move from ``stage`` to the next one, or wait for its approval, or finish."""
    nxt = stage + 1
    if nxt >= len(approvals):
        return Position(_S.COMPLETE, stage)
    if approvals[nxt]:
        return Position(_S.AWAITING_APPROVAL, stage)
    return Position(_S.CANARY, nxt)


def _next(position: Position, event: Event, *, has_lab: bool, approvals: tuple[bool, ...]) -> Position:  # noqa: PLR0911 - one return per event reads as the table
    state, stage = position.state, position.stage
    if event is Event.START:
        return Position(_S.LAB, -1) if has_lab else Position(_S.CANARY, 0)
    if event in {Event.LAB_PASSED, Event.PROMOTE}:
        return _widen(stage, approvals)
    if event is Event.APPROVE:
        return Position(_S.CANARY, stage + 1)
    if event is Event.PAUSE:
        return Position(_S.PAUSED, stage, resume=state)
    if event is Event.RESUME:
        return Position(position.resume or _S.CANARY, stage)
    if event is Event.ROLLBACK:
        return Position(_S.ROLLING_BACK, stage)
    if event is Event.ROLLBACK_DONE:
        return Position(_S.ROLLED_BACK, stage)
    return Position(_S.ABORTED, stage)
