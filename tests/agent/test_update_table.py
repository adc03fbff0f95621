"""The update lifecycle is one declared table; these tests read it as a specification."""

from __future__ import annotations

import re
from collections import deque
from typing import get_args

import pytest

from modelfleet.agent import TERMINAL, TRANSITIONS, CrashPoint, UpdateEvent, UpdateState, next_state
from modelfleet.protocol import InstallState

S, E = UpdateState, UpdateEvent

# Every path an install can take, as the sequence of events and the states it passes through.
SCENARIOS = {
    "install and commit": (
        [E.ASSIGNED, E.DOWNLOADED, E.VERIFIED, E.ACTIVATE, E.SWITCHED, E.HEALTH_PASSED],
        [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SWITCHING, S.TRIAL, S.COMMITTED],
    ),
    "health check fails": (
        [E.ASSIGNED, E.DOWNLOADED, E.VERIFIED, E.ACTIVATE, E.SWITCHED, E.HEALTH_FAILED, E.RESTORED],
        [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SWITCHING, S.TRIAL, S.ROLLING_BACK, S.ROLLED_BACK],
    ),
    "download fails": ([E.ASSIGNED, E.DOWNLOAD_FAILED], [S.DOWNLOADING, S.FAILED]),
    "incompatible header": ([E.ASSIGNED, E.INCOMPATIBLE], [S.DOWNLOADING, S.FAILED]),
    "lower release refused": ([E.ASSIGNED, E.REFUSED], [S.DOWNLOADING, S.FAILED]),
    "bad signature": ([E.ASSIGNED, E.DOWNLOADED, E.VERIFY_FAILED], [S.DOWNLOADING, S.VERIFYING, S.FAILED]),
    "incompatible at activation": (
        [E.ASSIGNED, E.DOWNLOADED, E.VERIFIED, E.INCOMPATIBLE],
        [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.FAILED],
    ),
    "switch fails": (
        [E.ASSIGNED, E.DOWNLOADED, E.VERIFIED, E.ACTIVATE, E.SWITCH_FAILED, E.RESTORED],
        [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SWITCHING, S.ROLLING_BACK, S.ROLLED_BACK],
    ),
    "trial keeps crashing": (
        [E.ASSIGNED, E.DOWNLOADED, E.VERIFIED, E.ACTIVATE, E.SWITCHED, E.LOOP, E.RESTORED],
        [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SWITCHING, S.TRIAL, S.ROLLING_BACK, S.ROLLED_BACK],
    ),
    "rollback keeps crashing": (
        [E.ASSIGNED, E.DOWNLOADED, E.VERIFIED, E.ACTIVATE, E.SWITCHED, E.HEALTH_FAILED, E.LOOP],
        [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SWITCHING, S.TRIAL, S.ROLLING_BACK, S.FAILED],
    ),
    "download keeps crashing": ([E.ASSIGNED, E.LOOP], [S.DOWNLOADING, S.FAILED]),
    "outage, then the download succeeds": (
        [
            *(E.ASSIGNED, E.DOWNLOAD_DEFERRED, E.DOWNLOAD_DEFERRED, E.DOWNLOADED),
            *(E.VERIFIED, E.ACTIVATE, E.SWITCHED, E.HEALTH_PASSED),
        ],
        [S.DOWNLOADING, S.DOWNLOADING, S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SWITCHING, S.TRIAL, S.COMMITTED],
    ),
    "outage, then another version is assigned": (
        [E.ASSIGNED, E.DOWNLOAD_DEFERRED, E.ASSIGNED, E.INCOMPATIBLE],
        [S.DOWNLOADING, S.DOWNLOADING, S.DOWNLOADING, S.FAILED],
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_walks_the_table(name):
    events, expected = SCENARIOS[name]
    state, seen = S.IDLE, []
    for event in events:
        state = next_state(state, event)
        seen.append(state)

    assert seen == expected
    assert state in TERMINAL


def test_state_names_are_the_protocol_install_states():
    assert [s.value for s in UpdateState] == list(get_args(InstallState))


def test_a_new_assignment_leaves_every_terminal_state_and_replaces_only_a_download():
    leaving = {state for (state, event) in TRANSITIONS if event == E.ASSIGNED}
    assert leaving == TERMINAL | {S.DOWNLOADING}  # before the switch nothing was touched yet


def test_only_a_transport_failure_keeps_the_install_waiting():
    staying = {(state, event) for (state, event), target in TRANSITIONS.items() if target == state}
    assert staying == {(S.DOWNLOADING, E.DOWNLOAD_DEFERRED), (S.DOWNLOADING, E.ASSIGNED)}
    assert next_state(S.DOWNLOADING, E.DOWNLOAD_FAILED) == S.FAILED  # bad bytes still fail the version


def test_every_state_with_a_step_can_stop_a_loop():
    assert {state for (state, event) in TRANSITIONS if event == E.LOOP} == set(UpdateState) - TERMINAL


def test_a_loop_after_the_switch_restores_the_previous_model_first():
    assert next_state(S.SWITCHING, E.LOOP) == S.ROLLING_BACK
    assert next_state(S.TRIAL, E.LOOP) == S.ROLLING_BACK
    assert {next_state(s, E.LOOP) for s in (S.DOWNLOADING, S.VERIFYING, S.STAGED, S.ROLLING_BACK)} == {S.FAILED}


def test_every_state_is_reachable_and_every_state_reaches_an_end():
    reachable = _closure(S.IDLE)
    assert reachable == set(UpdateState)
    for state in UpdateState:
        assert _closure(state) & (TERMINAL - {S.IDLE}), state


def test_failures_before_the_switch_never_roll_back_and_after_it_always_do():
    before, after = {S.DOWNLOADING, S.VERIFYING, S.STAGED}, {S.SWITCHING, S.TRIAL}
    for (state, event), target in TRANSITIONS.items():
        if state in before:
            assert target != S.ROLLING_BACK, (state, event)
        if state in after and target not in after | {S.COMMITTED}:
            assert target == S.ROLLING_BACK, (state, event)


def test_an_undeclared_transition_is_a_programming_error():
    with pytest.raises(RuntimeError, match="no transition from 'idle' on 'switched'"):
        next_state(S.IDLE, E.SWITCHED)


def test_crash_points_are_distinct_snake_case_names():
    values = [point.value for point in CrashPoint]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", value) for value in values)


def _closure(start: UpdateState) -> set[UpdateState]:
    seen, queue = {start}, deque([start])
    while queue:
        state = queue.popleft()
        for (source, _), target in TRANSITIONS.items():
            if source == state and target not in seen:
                seen.add(target)
                queue.append(target)
    return seen
