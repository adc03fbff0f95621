"""Each shipped scenario at a small size, fixed seed: real agents, a real server over loopback HTTP, one clock.

Every run also checks the bookkeeping every scenario must keep: each online device
runs a working model at the end, and every summary a device saw acknowledged is
stored by the server exactly once.
"""

import json
import math
import subprocess
import sys
from collections import defaultdict
from datetime import UTC

import pytest
from sqlalchemy import select

from modelfleet.sim import load_scenario, run_scenario
from modelfleet.store import SummaryRow

pytestmark = pytest.mark.slow

DEVICES = 100
ABBA, BAAB = ["1.0.0", "2.0.0", "2.0.0", "1.0.0"], ["2.0.0", "1.0.0", "1.0.0", "2.0.0"]


@pytest.fixture
def played(tmp_path):
    """Play a shipped scenario on DEVICES devices; the outcome (the fleet is closed)."""

    def play(name):
        outcome, fleet = run_scenario(load_scenario(name), DEVICES, tmp_path)
        fleet.close()
        fleet.stop_server()
        assert outcome.without_model == []
        assert outcome.summaries_sent == outcome.summaries_stored > 0
        return outcome

    return play


def rollback_gates(outcome, version):
    rollback = next(d for d in outcome.rollouts[version]["decisions"] if d["event"] == "rollback")
    return rollback["stage"], {g["metric"]: g for g in rollback["detail"]["evaluation"]["gates"]}


def test_silent_regression_is_rolled_back_by_the_confidence_gate_in_the_first_stage(played):
    outcome = played("silent-regression")
    assert outcome.expectations == {"rollout 2.0.0 rolled_back": True, "every online device runs a model": True}
    stage, gates = rollback_gates(outcome, "2.0.0")
    assert stage == 0
    assert gates["mean_confidence"]["decision"] == "rollback"
    assert gates["mean_confidence"]["upper"] < 0
    assert gates["error_rate"]["decision"] != "rollback", "no errors: only the answers got worse"
    last = outcome.rounds[-1]
    assert last.running == {"1.0.0": DEVICES}
    worse = [r.versions["2.0.0"] for r in outcome.rounds if "2.0.0" in r.versions]
    assert worse, "canaries ran 2.0.0"
    assert all(v.true_accuracy < 0.7 for v in worse), "the devices' ground truth confirms the gate"
    assert outcome.built["2.0.0"].accuracy > outcome.built["1.0.0"].accuracy, "and offline it looked better"


def test_aging_sensors_trigger_retraining_and_the_field_trained_version_completes(played):
    outcome = played("aging-sensors")
    assert outcome.ok, outcome.expectations
    requested = [e for e in outcome.retrain_events if e["version"] == "1.0.0"]
    assert requested, "retrain.requested for the stable version reached the webhook"
    assert outcome.stable == "2.0.0"
    assert outcome.rounds[-1].running == {"2.0.0": DEVICES}
    before = [r.versions["1.0.0"].true_accuracy for r in outcome.rounds if "1.0.0" in r.versions]
    after = outcome.rounds[-1].versions["2.0.0"].true_accuracy
    assert before[0] - before[-1] > 0.05, "aging cost v1 accuracy"
    assert after > before[-1]


def test_a_flaky_fleet_with_outages_and_power_cuts_still_completes(played):
    outcome = played("flaky-fleet")
    assert outcome.ok, outcome.expectations
    assert outcome.power_cuts > 0, "some devices lost power mid-install and resumed"
    assert outcome.failed_steps > 0, "links dropped requests and went down"
    assert outcome.rounds[-1].running == {"2.0.0": DEVICES}


def test_an_ab_test_reports_labelled_accuracy_and_promotes_the_better_variant(played):
    outcome = played("ab-test")
    assert outcome.ok, outcome.expectations
    final = outcome.rollouts["2.0.0"]["decisions"][-1]
    gates = {g["metric"]: g for g in final["detail"]["evaluation"]["gates"]}
    assert gates["accuracy"]["estimate"] > 0, "the candidate is more accurate on aged sensors"
    assert gates["accuracy"]["treated_devices"] >= 20
    assert gates["accuracy"]["holdout_devices"] >= 20


def test_a_shadow_test_names_the_better_candidate_without_it_answering(tmp_path):
    outcome, fleet = run_scenario(load_scenario("shadow-test"), 20, tmp_path)
    fleet.close()
    fleet.stop_server()
    assert outcome.ok, outcome.expectations
    assert outcome.summaries_sent == outcome.summaries_stored > 0
    assert all(set(r.running) == {"1.0.0"} for r in outcome.rounds), "the candidate never serves"
    analysis = outcome.experiments["2.0.0"]["analysis"]
    assert analysis["devices"] == [20]
    assert 0 < analysis["shadow"]["agreement"]["estimate"] < 1
    (accuracy,) = [lift for lift in analysis["lifts"] if lift["metric"] == "accuracy"]
    assert accuracy["lower"] > 0, "the field-trained candidate is more accurate on aged sensors"


def answers_by_device(fleet):
    """Per device, the version that answered each time-slice window by its slot (the summaries the server stored)."""
    s = SummaryRow
    query = select(s.device_id, s.version, s.window_start).where(s.role == "time_slice", s.n > 0)
    answered = defaultdict(dict)
    with fleet.server.engine.connect() as connection:
        for device_id, version, start in connection.execute(query):
            slot = int(start.replace(tzinfo=UTC).timestamp()) // fleet.window
            assert slot not in answered[device_id], f"{device_id}: one version per window"
            answered[device_id][slot] = version
    return answered


def test_a_time_slice_test_names_the_better_candidate_with_both_versions_answering_on_every_device(tmp_path):
    outcome, fleet = run_scenario(load_scenario("time-slice-test"), 20, tmp_path)
    fleet.close()
    answered = answers_by_device(fleet)
    fleet.stop_server()
    assert outcome.ok, outcome.expectations
    assert outcome.summaries_sent == outcome.summaries_stored > 0
    assert all(r.running == {"1.0.0": 20} for r in outcome.rounds), "the candidate answers but never becomes current"
    assert len(answered) == 20
    for device_id, slots in answered.items():
        first = math.ceil(min(slots) / 4) * 4  # the device's first whole block of four windows
        block = [slots.get(slot) for slot in range(first, first + 4)]
        assert block in (ABBA, BAAB), f"{device_id} runs its order, then the order reversed: {block}"
    analysis = outcome.experiments["2.0.0"]["analysis"]
    assert analysis["time_slice"] == {"slot_seconds": outcome.window_s, "slots_per_device": 4}
    assert analysis["devices"] == [20], "every device's windows of both versions entered its own comparison"
    (accuracy,) = [lift for lift in analysis["lifts"] if lift["metric"] == "accuracy"]
    assert accuracy["devices"] == 20
    assert accuracy["lower"] > 0, "the field-trained candidate is more accurate on aged sensors"
    sliced = [r.versions for r in outcome.rounds if len(r.versions) == 2]
    true = {
        v: sum(r[v].true_accuracy * r[v].n for r in sliced) / sum(r[v].n for r in sliced) for v in ("1.0.0", "2.0.0")
    }
    assert true["2.0.0"] > true["1.0.0"], "the devices' ground truth agrees"


def test_modelfleet_sim_runs_the_good_update_and_prints_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "sim", "--scenario", "good-update", "--devices", str(DEVICES), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["rollouts"]["2.0.0"]["state"] == "complete"
    assert [d["event"] for d in report["rollouts"]["2.0.0"]["decisions"]] == ["start", "promote", "promote"]
    assert report["summaries"]["sent"] == report["summaries"]["stored"]
