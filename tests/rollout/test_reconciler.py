"""The reconciler on a real database: silent regressions roll back, good updates complete, decisions once.

Telemetry comes from :class:`SimFleet` (tests/rollout/conftest.py): devices with
their own levels of top-1 confidence, running what the engine assigns them.
"""

import threading

import pytest
from sqlalchemy import func, select

from modelfleet.errors import ConflictError, PermissionDeniedError
from modelfleet.rollout import Event, Reconciler, new_rollout, parse_spec, run_command
from modelfleet.store import (
    Alias,
    RolloutDecisionRow,
    Transition,
    apply_transition,
    find_rollout,
    list_audit,
    list_decisions,
    verify_audit_chain,
)

SPEC = {
    "model": "digits",
    "version": "2.0.0",
    "holdout_percent": 20,
    "exposure_windows": 2,
    "stages": [{"percent": 25}, {"percent": 60}, {"percent": 100}],
    "gates": [{"metric": "mean_confidence", "margin": 0.03}, {"metric": "error_rate", "margin": 0.02}],
}


def start(fleet, **changes):
    spec = parse_spec({**SPEC, **changes})
    with fleet.sessions.begin() as session:
        # A fixed salt: cohorts (which seeded devices are treated) are the same in every run.
        row = new_rollout(session, spec, now=fleet.clock.now(), actor="alice", salt="reconciler-tests")
        run_command(session, row.id, Event.START, actor="alice", role="admin", now=fleet.clock.now())
        return row.id


def decisions(fleet, rollout_id):
    with fleet.sessions() as session:
        return [(d.event, d.from_state, d.to_state, d.stage) for d in list_decisions(session, rollout_id)]


def test_a_silent_regression_is_rolled_back_on_label_free_gates_in_the_first_stage(sim_fleet):
    fleet = sim_fleet()
    fleet.effects.confidence = -0.06  # plausible answers, no errors: only confidence drops
    rollout_id = start(fleet)
    assert fleet.run(rollout_id, until={"rolled_back"}) == "rolled_back"
    events = decisions(fleet, rollout_id)
    assert events[0] == ("start", "pending", "canary", 0)
    assert events[1][:3] == ("rollback", "canary", "rolling_back")
    assert events[1][3] == 0, "caught in the first canary stage"
    assert events[2][:3] == ("rollback_done", "rolling_back", "rolled_back")
    assert set(fleet.running.values()) == {"1.0.0"}
    with fleet.sessions() as session:
        rollback = list_decisions(session, rollout_id)[1]
        gates = {g["metric"]: g for g in rollback.detail["evaluation"]["gates"]}
        assert gates["mean_confidence"]["decision"] == "rollback"
        assert gates["mean_confidence"]["upper"] < 0
        assert gates["mean_confidence"]["degradation_p_value"] < 0.01
        assert gates["error_rate"]["decision"] != "rollback"
        assert "mean_confidence" in rollback.reason
        assert verify_audit_chain(session).ok
        assert [e.action for e in list_audit(session, action="rollout.rollback")] == ["rollout.rollback"]


def test_a_good_update_promotes_stage_by_stage_and_becomes_stable(sim_fleet):
    fleet = sim_fleet()
    rollout_id = start(fleet)
    assert fleet.run(rollout_id, until={"complete", "rolled_back"}) == "complete"
    assert decisions(fleet, rollout_id) == [
        ("start", "pending", "canary", 0),
        ("promote", "canary", "canary", 1),
        ("promote", "canary", "canary", 2),
        ("promote", "canary", "complete", 2),
    ]
    fleet.follow_assignments()
    assert set(fleet.running.values()) == {"2.0.0"}, "holdout devices join at completion"
    with fleet.sessions() as session:
        assert session.get(Alias, ("digits", "stable")).version == "2.0.0"


def test_the_treated_share_grows_with_the_stages_and_holdout_stays_on_the_baseline(sim_fleet):
    fleet = sim_fleet()
    rollout_id = start(fleet)
    shares = []
    for _ in range(40):
        fleet.step()
        shares.append(sum(v == "2.0.0" for v in fleet.running.values()) / len(fleet.ids))
        if fleet.state(rollout_id) == "complete":
            break
    assert fleet.state(rollout_id) == "complete"
    assert shares[0] == pytest.approx(0.8 * 0.25, abs=0.07)
    assert shares == sorted(shares), "no device goes back while the rollout widens"
    assert shares[-2] == pytest.approx(0.8, abs=0.07), "the last stage treats the whole non-holdout target"
    fleet.follow_assignments()
    assert set(fleet.running.values()) == {"2.0.0"}


def test_install_failures_roll_back_without_waiting_for_statistics(sim_fleet):
    fleet = sim_fleet()
    rollout_id = start(fleet)
    fleet.follow_assignments()
    treated = [d for d, v in fleet.running.items() if v == "2.0.0"]
    for device_id in treated[:6]:
        fleet.event(device_id, "health_failed")
    for device_id in treated[6:10]:
        fleet.event(device_id, "health_passed")
    assert fleet.reconciler.tick() == [rollout_id]
    with fleet.sessions() as session:
        rollback = list_decisions(session, rollout_id)[-1]
    assert rollback.event == "rollback"
    assert "6 of 10 devices" in rollback.reason


def test_a_crash_loop_pauses_when_the_spec_says_pause(sim_fleet):
    fleet = sim_fleet()
    rollout_id = start(fleet, on_failure="pause")
    fleet.event("dev-0001", "crash_loop")
    fleet.reconciler.tick()
    assert fleet.state(rollout_id) == "paused"
    with fleet.sessions.begin() as session:
        run_command(session, rollout_id, Event.RESUME, actor="bob", role="admin", now=fleet.clock.now())
    assert fleet.state(rollout_id) == "canary"


def test_a_stage_that_needs_approval_waits_for_the_right_role(sim_fleet):
    fleet = sim_fleet()
    stages = [{"percent": 25}, {"percent": 60, "approval": "admin"}, {"percent": 100}]
    rollout_id = start(fleet, stages=stages)
    assert fleet.run(rollout_id, until={"awaiting_approval"}) == "awaiting_approval"
    for _ in range(3):
        fleet.step()
    assert fleet.state(rollout_id) == "awaiting_approval", "a look never approves"
    with fleet.sessions.begin() as session, pytest.raises(PermissionDeniedError, match="needs approval by admin"):
        run_command(session, rollout_id, Event.APPROVE, actor="rm", role="release-manager", now=fleet.clock.now())
    with fleet.sessions.begin() as session:
        row = run_command(session, rollout_id, Event.APPROVE, actor="carol", role="admin", now=fleet.clock.now())
        assert (row.state, row.stage) == ("canary", 1)
    with fleet.sessions() as session:
        approvals = list_audit(session, action="rollout.approve")
        assert [(a.actor, a.detail["to"]) for a in approvals] == [("carol", "canary")]


def test_a_decision_on_a_stale_revision_is_not_applied(sim_fleet):
    fleet = sim_fleet()
    rollout_id = start(fleet)
    stale = Transition(
        rollout_id=rollout_id, seen_revision=0, event="abort", from_state="pending", to_state="aborted", stage=-1,
        resume_state=None, actor="ghost", reason="decided before the start", detail={},
    )  # fmt: skip
    with fleet.sessions.begin() as session:
        assert apply_transition(session, stale, now=fleet.clock.now()) is False
    assert fleet.state(rollout_id) == "canary"
    assert [d[0] for d in decisions(fleet, rollout_id)] == ["start"]


def look(reconciler, errors):
    try:
        reconciler.tick()
    except Exception as exc:  # noqa: BLE001 - collected and asserted by the caller
        errors.append(exc)


def test_two_reconcilers_looking_at_once_decide_each_step_once(sim_fleet, engine):
    fleet = sim_fleet()
    fleet.effects.confidence = -0.06
    rollout_id = start(fleet)
    other = Reconciler(fleet.sessions, fleet.clock, actor="replica-2")
    for _ in range(8):
        fleet.follow_assignments()
        fleet.report_window()
        errors: list[Exception] = []
        threads = [threading.Thread(target=look, args=(r, errors)) for r in (fleet.reconciler, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] or all("locked" in str(e) or "could not serialize" in str(e) for e in errors)
    with fleet.sessions() as session:
        revisions = list(session.scalars(select(RolloutDecisionRow.revision).where(
            RolloutDecisionRow.rollout_id == rollout_id)))  # fmt: skip
        rollbacks = session.scalar(
            select(func.count()).where(
                RolloutDecisionRow.rollout_id == rollout_id, RolloutDecisionRow.event == "rollback"
            )
        )
    assert len(revisions) == len(set(revisions))
    assert rollbacks == 1


def test_a_restarted_reconciler_continues_from_the_stored_state(sim_fleet):
    fleet = sim_fleet()
    fleet.effects.confidence = -0.06
    rollout_id = start(fleet)
    fleet.step()
    before = decisions(fleet, rollout_id)
    fleet.reconciler = Reconciler(fleet.sessions, fleet.clock)  # a new process: nothing in memory
    assert fleet.run(rollout_id, until={"rolled_back"}) == "rolled_back"
    after = decisions(fleet, rollout_id)
    assert after[: len(before)] == before
    assert [d[0] for d in after].count("rollback") == 1


def test_one_rollout_per_model_at_a_time(sim_fleet):
    fleet = sim_fleet()
    start(fleet)
    with fleet.sessions.begin() as session, pytest.raises(ConflictError, match="already has rollout"):
        new_rollout(session, parse_spec(SPEC), now=fleet.clock.now(), actor="alice")


def test_commands_the_table_refuses_are_conflicts(sim_fleet):
    fleet = sim_fleet()
    rollout_id = start(fleet)
    with fleet.sessions.begin() as session, pytest.raises(ConflictError) as caught:
        run_command(session, rollout_id, Event.RESUME, actor="alice", role="admin", now=fleet.clock.now())
    assert caught.value.code == "bad_transition"
    with fleet.sessions() as session:
        assert find_rollout(session, rollout_id).revision == 1


def test_a_lab_stage_runs_on_lab_devices_first(sim_fleet):
    fleet = sim_fleet(lab=3)
    rollout_id = start(fleet, lab={"min_devices": 2})
    fleet.follow_assignments()
    assert {d for d, v in fleet.running.items() if v == "2.0.0"} == {"dev-0000", "dev-0001", "dev-0002"}
    fleet.event("dev-0000", "health_passed")
    fleet.reconciler.tick()
    assert fleet.state(rollout_id) == "lab"
    fleet.event("dev-0001", "committed")
    fleet.reconciler.tick()
    assert fleet.state(rollout_id) == "canary"


def test_a_failing_lab_device_stops_the_rollout_before_any_field_device(sim_fleet):
    fleet = sim_fleet(lab=2)
    rollout_id = start(fleet, lab={"min_devices": 1})
    fleet.event("dev-0001", "health_failed")
    fleet.reconciler.tick()
    assert fleet.state(rollout_id) == "rolling_back"
    fleet.follow_assignments()
    assert set(fleet.running.values()) == {"1.0.0"}
