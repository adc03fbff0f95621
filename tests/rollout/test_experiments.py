"""A/B experiments on a real database: sticky variants, a winner shipped by a rollout, SRM stops, conflicts."""

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import insert

from modelfleet.errors import ConflictError
from modelfleet.rollout import (
    Event,
    ExperimentSpec,
    ExperimentWatcher,
    current_analysis,
    device_time_slice,
    experiment_variant,
    new_rollout,
    parse_spec,
    promote_experiment,
    run_command,
    start_experiment,
    stop_experiment,
)
from modelfleet.rollout._experiment_paired import _slice_devices as slice_devices
from modelfleet.rollout._experiment_run import current_document
from modelfleet.store import DeviceWindow, SummaryRow, find_experiment, find_rollout, list_audit

SPEC = {
    "model": "digits",
    "variants": [{"version": "1.0.0", "share": 50}, {"version": "2.0.0", "share": 50}],
    "metrics": [{"metric": "mean_confidence"}, {"metric": "error_rate"}],
    "minimum_detectable_effect": 0.02,
    "exposure_windows": 2,
    "device_sd": 0.02,
    "auto_promote": {
        "holdout_percent": 20,
        "stages": [{"percent": 50}, {"percent": 100}],
        "gates": [{"metric": "mean_confidence", "margin": 0.03}],
    },
}


def start(fleet, spec=SPEC, *, force=True):
    with fleet.sessions.begin() as session:
        row = start_experiment(
            session, ExperimentSpec.model_validate(spec), now=fleet.clock.now(), actor="alice", force=force
        )
        return row.id, row.salt


def follow(fleet, experiment_id, salt, *, silent_arm=None):
    """Devices run their variant; the devices of ``silent_arm`` stop reporting (as after a bad install)."""
    spec = ExperimentSpec.model_validate(SPEC)
    silent = set()
    for device_id in fleet.ids:
        arm = experiment_variant(salt, device_id, fleet.tags[device_id], spec)
        fleet.running[device_id] = spec.variants[arm].version
        if arm == silent_arm:
            silent.add(device_id)
    return silent


def report(fleet, silent=()):
    kept = fleet.ids
    fleet.ids = [d for d in kept if d not in silent]
    try:
        fleet.report_window()
    finally:
        fleet.ids = kept


def test_variants_split_the_target_by_their_shares_and_stick(sim_fleet):
    fleet = sim_fleet()
    _, salt = start(fleet)
    spec = ExperimentSpec.model_validate(SPEC)
    arms = [experiment_variant(salt, d, {}, spec) for d in fleet.ids]
    assert 0.4 < arms.count(1) / len(arms) < 0.6
    assert arms == [experiment_variant(salt, d, {}, spec) for d in fleet.ids]


def test_a_better_variant_wins_and_is_shipped_through_a_staged_rollout(sim_fleet):
    fleet = sim_fleet()
    fleet.effects.confidence = 0.04
    experiment_id, salt = start(fleet)
    follow(fleet, experiment_id, salt)
    watcher = ExperimentWatcher(fleet.sessions, fleet.clock)
    for _ in range(6):
        report(fleet)
        if watcher.tick():
            break
    with fleet.sessions() as session:
        row = find_experiment(session, experiment_id)
        assert (row.state, row.winner) == ("promoted", "2.0.0")
        rollout = find_rollout(session, row.rollout_id)
        assert (rollout.version, rollout.state, rollout.baseline_version) == ("2.0.0", "canary", "1.0.0")
        (promoted,) = list_audit(session, action="experiment.promoted")
        lifts = promoted.detail["analysis"]["lifts"]
        confidence = next(lift for lift in lifts if lift["metric"] == "mean_confidence")
        assert confidence["better"] is True
        assert confidence["lower"] > 0


def test_devices_of_one_variant_going_silent_stop_the_experiment_on_sample_ratio_mismatch(sim_fleet):
    fleet = sim_fleet(devices=400)
    experiment_id, salt = start(fleet)
    silent = follow(fleet, experiment_id, salt, silent_arm=1)
    quiet = set(list(silent)[: len(silent) * 2 // 3])  # two thirds of variant 1 never report
    watcher = ExperimentWatcher(fleet.sessions, fleet.clock)
    for _ in range(4):
        report(fleet, quiet)
        watcher.tick()
    with fleet.sessions() as session:
        row = find_experiment(session, experiment_id)
        assert row.state == "stopped"
        assert "sample" in (row.reason or "").lower()


def test_without_a_winner_promotion_needs_a_named_version(sim_fleet):
    fleet = sim_fleet()
    experiment_id, salt = start(fleet)
    follow(fleet, experiment_id, salt)
    report(fleet)
    with fleet.sessions.begin() as session, pytest.raises(ConflictError) as caught:
        promote_experiment(session, experiment_id, now=fleet.clock.now(), actor="alice")
    assert caught.value.code == "no_winner"
    with fleet.sessions.begin() as session:
        row = promote_experiment(session, experiment_id, now=fleet.clock.now(), actor="alice", version="2.0.0")
        assert row.state == "promoted"


def test_experiments_and_rollouts_of_one_model_exclude_each_other(sim_fleet):
    fleet = sim_fleet()
    experiment_id, _ = start(fleet)
    rollout = parse_spec({**SPEC["auto_promote"], "model": "digits", "version": "2.0.0"})
    with fleet.sessions.begin() as session, pytest.raises(ConflictError) as caught:
        new_rollout(session, rollout, now=fleet.clock.now(), actor="alice")
    assert caught.value.code == "experiment_in_progress"
    with fleet.sessions.begin() as session:
        stop_experiment(session, experiment_id, now=fleet.clock.now(), actor="alice", reason="done")
    with fleet.sessions.begin() as session:
        row = new_rollout(session, rollout, now=fleet.clock.now(), actor="alice")
        run_command(session, row.id, Event.START, actor="alice", role="admin", now=fleet.clock.now())
    with pytest.raises(ConflictError) as caught:
        start(fleet)
    assert caught.value.code == "rollout_in_progress"


def test_shadow_and_time_slice_start_with_a_plan_from_the_within_device_spread(sim_fleet):
    fleet = sim_fleet()
    for kind in ("shadow", "time_slice"):
        experiment_id, _ = start(fleet, {**SPEC, "kind": kind})
        with fleet.sessions.begin() as session:
            row = find_experiment(session, experiment_id)
            assert (row.kind, row.state) == (kind, "running")
            assert row.planned_devices >= 2
            assert current_analysis(session, row).verdict == "inconclusive"
            stop_experiment(session, experiment_id, now=fleet.clock.now(), actor="alice", reason="next kind")


def test_a_plan_that_cannot_reach_its_power_is_refused_unless_forced(sim_fleet):
    fleet = sim_fleet(devices=40)
    tiny = {**SPEC, "minimum_detectable_effect": 0.001}
    with pytest.raises(ConflictError) as caught:
        start(fleet, tiny, force=False)
    assert caught.value.code == "plan_infeasible"
    experiment_id, _ = start(fleet, tiny, force=True)
    with fleet.sessions() as session:
        analysis = current_analysis(session, find_experiment(session, experiment_id))
    assert analysis.verdict == "inconclusive"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"variants": [{"version": "1.0.0", "share": 60}, {"version": "2.0.0", "share": 60}]}, "add up to 100"),
        ({"variants": [{"version": "1.0.0", "share": 100}]}, "variants"),
        ({"kind": "shadow", "variants": [{"version": "1.0.0", "share": 50}, {"version": "2.0.0", "share": 25},
                                         {"version": "3.0.0", "share": 25}]}, "exactly two versions"),
    ],
)  # fmt: skip
def test_a_wrong_spec_names_what_is_wrong(change, field):
    with pytest.raises(ValueError, match=field):
        ExperimentSpec.model_validate({**SPEC, **change})


def test_time_slice_windows_count_only_in_the_slot_and_version_the_schedule_gives():
    spec = ExperimentSpec.model_validate(
        {**SPEC, "kind": "time_slice", "metrics": [{"metric": "accuracy"}], "exposure_windows": 3, "window_seconds": 60}
    )
    versions = ("1.0.0", "2.0.0")
    windows = []
    for device_id in ("dev-a", "dev-b", "dev-c"):
        schedule = device_time_slice("salt", device_id, spec)
        for k in range(4, 9):  # slot 4 starts a block; slot 8 is past the span of 4
            at = datetime.fromtimestamp(k * 60, UTC)
            arm = schedule.version_at(at)
            windows.append(window(device_id, versions[arm], at, correct=90 if arm == 0 else 80))
            windows.append(window(device_id, versions[1 - arm], at, correct=0))  # off schedule: not counted
    devices = slice_devices(windows, spec, "salt")
    assert [d.device_id for d in devices] == ["dev-a", "dev-b", "dev-c"]
    for device in devices:
        assert device.completed_at == 8 * 60
        assert sorted(device.schedule) == [0, 0, 1, 1]
        assert device.values["accuracy"] == [0.9 if arm == 0 else 0.8 for arm in device.schedule]


def window(device_id, version, at, *, correct):
    return DeviceWindow(
        device_id=device_id, version=version, window_start=at, window_seconds=60, n=100, errors=0, fallbacks=0,
        timeouts=0, n_labelled=100, n_correct=correct, n_scored=100, confidence_sum=80.0, latency_sum_ms=100.0,
    )  # fmt: skip


SHADOW = {**SPEC, "kind": "shadow", "metrics": [{"metric": "accuracy"}]}


def test_a_shadow_spec_without_a_latency_margin_gets_the_default_and_carries_it_when_stored():
    spec = ExperimentSpec.model_validate(SHADOW)
    assert spec.latency_margin == 0.25
    assert spec.canonical()["latency_margin"] == 0.25
    stored_before = {key: value for key, value in spec.canonical().items() if key != "latency_margin"}
    assert ExperimentSpec.model_validate(stored_before).latency_margin == 0.25
    assert ExperimentSpec.model_validate({**SHADOW, "latency_margin": 0.5}).shadow_latency_margin == 0.5
    ab = ExperimentSpec.model_validate(SPEC)
    assert ab.latency_margin is None
    assert ExperimentSpec.model_validate(ab.canonical()) == ab


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"latency_margin": -0.1}, "latency_margin"),
        ({"latency_margin": 11}, "latency_margin"),
        ({"kind": "ab", "latency_margin": 0.25}, "only a shadow"),
        ({"kind": "time_slice", "latency_margin": 0.25}, "only a shadow"),
    ],
)
def test_a_latency_margin_out_of_bounds_or_on_another_kind_is_refused(change, field):
    with pytest.raises(ValueError, match=field):
        ExperimentSpec.model_validate({**SHADOW, **change})


def report_shadow(fleet, *, slowdown, windows=2, untimed=()):
    """Every device runs 1.0.0 and shadows 2.0.0 for ``windows`` windows; the candidate is more accurate and
    measures ``slowdown`` slower (geometric mean over devices); the devices in ``untimed`` report no latency."""
    rng = np.random.default_rng(11)
    level = dict(zip(fleet.ids, 2.0 * np.exp(0.5 * rng.standard_normal(len(fleet.ids))), strict=True))
    n = 100
    for _ in range(windows):
        start, rows = fleet.clock.now(), []
        for device_id in fleet.ids:
            active_ms = 0.0 if device_id in untimed else level[device_id] * np.exp(0.05 * rng.standard_normal())
            candidate_ms = level[device_id] * (1 + slowdown) * np.exp(0.1 * rng.standard_normal())
            flips = int(rng.binomial(n, 0.1))
            only_candidate = int(rng.binomial(flips, 0.7))
            only_active = flips - only_candidate
            shadow = {
                "active_version": "1.0.0", "n_compared": n, "n_agree": n - flips, "active_confidence_sum": 80.0,
                "n_labelled": n, "active_correct": 80, "candidate_correct": 80 - only_active + only_candidate,
                "only_active_correct": only_active, "only_candidate_correct": only_candidate,
            }  # fmt: skip
            for version, role, latency, body in (
                ("1.0.0", "active", active_ms, {}),
                ("2.0.0", "shadow", candidate_ms, {"shadow": shadow}),
            ):
                rows.append({
                    "id": uuid.uuid4().hex, "device_id": device_id, "model": "digits", "version": version,
                    "role": role, "cohort": None, "window_start": start, "window_seconds": 300, "n": n, "errors": 0,
                    "fallbacks": 0, "timeouts": 0, "n_labelled": 0, "n_correct": 0, "n_scored": n,
                    "confidence_sum": 80.0, "confidence_sum_sq": 64.0, "latency_sum_ms": latency * n, "body": body,
                    "received_at": start,
                })  # fmt: skip
        with fleet.engine.begin() as connection:
            connection.execute(insert(SummaryRow), rows)
        fleet.clock.advance(300)


@pytest.mark.parametrize(("slowdown", "verdict", "worse"), [(0.15, "winner", False), (1.0, "loser", True)])
def test_a_shadow_candidate_measured_15_percent_slower_wins_and_one_twice_as_slow_loses(
    sim_fleet, slowdown, verdict, worse
):
    fleet = sim_fleet()
    experiment_id, _ = start(fleet, SHADOW)
    report_shadow(fleet, slowdown=slowdown)
    with fleet.sessions() as session:
        document = current_document(session, find_experiment(session, experiment_id))
    assert document["verdict"] == verdict
    (latency,) = [lift for lift in document["lifts"] if lift["metric"] == "latency_ms"]
    assert (latency["margin"], latency["worse"]) == (0.25, worse)
    assert latency["relative"] == pytest.approx(slowdown, abs=0.05)
    assert document["shadow"]["latency_margin"] == 0.25


def test_the_spec_sets_the_shadow_latency_margin_and_untimed_devices_are_left_out(sim_fleet):
    fleet = sim_fleet()
    experiment_id, _ = start(fleet, {**SHADOW, "latency_margin": 0.05})
    with fleet.sessions() as session:
        assert find_experiment(session, experiment_id).spec["latency_margin"] == 0.05
    report_shadow(fleet, slowdown=0.15, untimed={fleet.ids[0]})
    with fleet.sessions() as session:
        document = current_document(session, find_experiment(session, experiment_id))
    assert document["verdict"] == "loser", "15 % slower is beyond a 5 % margin"
    assert document["shadow"]["latency_margin"] == 0.05
    assert document["devices"] == [len(fleet.ids) - 1]
