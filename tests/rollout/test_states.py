"""The rollout state table: every allowed move, and refusals of the rest."""

import pytest

from modelfleet.rollout import Event, Position, RolloutState, transition

S = RolloutState
NO_APPROVALS = (False, False, False)

# (from, event, has_lab, approvals) -> to
MOVES = {
    "start without lab": (Position(S.PENDING), Event.START, False, NO_APPROVALS, Position(S.CANARY, 0)),
    "start with lab": (Position(S.PENDING), Event.START, True, NO_APPROVALS, Position(S.LAB, -1)),
    "lab passed": (Position(S.LAB, -1), Event.LAB_PASSED, True, NO_APPROVALS, Position(S.CANARY, 0)),
    "lab passed, stage 1 needs approval": (
        Position(S.LAB, -1), Event.LAB_PASSED, True, (True, False, False), Position(S.AWAITING_APPROVAL, -1),
    ),
    "promote widens": (Position(S.CANARY, 0), Event.PROMOTE, False, NO_APPROVALS, Position(S.CANARY, 1)),
    "promote waits for approval": (
        Position(S.CANARY, 0), Event.PROMOTE, False, (False, True, False), Position(S.AWAITING_APPROVAL, 0),
    ),
    "approve widens": (
        Position(S.AWAITING_APPROVAL, 0), Event.APPROVE, False, (False, True, False), Position(S.CANARY, 1),
    ),
    "last promote completes": (Position(S.CANARY, 2), Event.PROMOTE, False, NO_APPROVALS, Position(S.COMPLETE, 2)),
    "pause remembers": (Position(S.CANARY, 1), Event.PAUSE, False, NO_APPROVALS, Position(S.PAUSED, 1, S.CANARY)),
    "resume returns": (Position(S.PAUSED, 1, S.CANARY), Event.RESUME, False, NO_APPROVALS, Position(S.CANARY, 1)),
    "rollback": (Position(S.CANARY, 1), Event.ROLLBACK, False, NO_APPROVALS, Position(S.ROLLING_BACK, 1)),
    "rollback after complete": (
        Position(S.COMPLETE, 2), Event.ROLLBACK, False, NO_APPROVALS, Position(S.ROLLING_BACK, 2),
    ),
    "rollback done": (
        Position(S.ROLLING_BACK, 1), Event.ROLLBACK_DONE, False, NO_APPROVALS, Position(S.ROLLED_BACK, 1),
    ),
    "abort a pending rollout": (Position(S.PENDING), Event.ABORT, False, NO_APPROVALS, Position(S.ABORTED, -1)),
}  # fmt: skip


@pytest.mark.parametrize(("before", "event", "lab", "approvals", "after"), MOVES.values(), ids=MOVES.keys())
def test_allowed_moves(before, event, lab, approvals, after):
    assert transition(before, event, has_lab=lab, approvals=approvals) == after


REFUSED = {
    "start twice": (Position(S.CANARY, 0), Event.START),
    "promote while awaiting approval": (Position(S.AWAITING_APPROVAL, 0), Event.PROMOTE),
    "approve a canary stage": (Position(S.CANARY, 0), Event.APPROVE),
    "resume a running rollout": (Position(S.CANARY, 0), Event.RESUME),
    "abort a complete rollout": (Position(S.COMPLETE, 2), Event.ABORT),
    "anything after rolled back": (Position(S.ROLLED_BACK, 1), Event.ROLLBACK),
    "pause a pending rollout": (Position(S.PENDING), Event.PAUSE),
    "roll back twice": (Position(S.ROLLING_BACK, 1), Event.ROLLBACK),
}


@pytest.mark.parametrize(("before", "event"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_moves_say_why(before, event):
    with pytest.raises(ValueError, match=f"{event.value!r} is not allowed while the rollout is {before.state.value}"):
        transition(before, event, has_lab=False, approvals=NO_APPROVALS)
