"""Rollouts over the real app: what check-ins answer at each step, and the API's refusals."""

import pytest

from modelfleet.rollout import Cohort, assign
from modelfleet.store import RolloutRow, session_factory

SPEC = {
    "model": "digits",
    "version": "1.1.0",
    "holdout_percent": 30,
    "selector": {"ring": "field"},
    "stages": [{"percent": 50}, {"percent": 100}],
    "gates": [{"metric": "error_rate", "margin": 0.05}],
    "planning": {"device_sd": {"error_rate": 0.001}},
}


@pytest.fixture
def field(fleet):
    for version in ("1.0.0", "1.1.0"):
        assert fleet.upload(version).status_code == 201
    fleet.pin("1.0.0", selector={})
    devices = [fleet.device(f"dev-{i:02d}", tags={"ring": "field"}) for i in range(24)]
    outsider = fleet.device("dev-lab-x", tags={"ring": "office"})
    return devices, outsider


def start(fleet, spec=SPEC, force="true"):
    """Start (forced: two dozen devices cannot reach the gate's 20 devices per arm)."""
    response = fleet.client.post("/v1/admin/rollouts", json=spec, headers=fleet.admin(), params={"force": force})
    assert response.status_code == 201, response.text
    return response.json()


def wanted(fleet, device, running="1.0.0", release=1):
    answer = fleet.checkin(device, installed_models=[fleet.installed(running, release)])
    assert answer.status_code == 200, answer.text
    (model,) = answer.json()["desired"]
    return model


def test_check_ins_follow_the_cohorts_and_a_rollback_is_marked_as_such(fleet, field):
    devices, outsider = field
    rollout = start(fleet)
    assert (rollout["state"], rollout["stage"], rollout["baseline_version"]) == ("canary", 0, "1.0.0")
    answers = {d.id: wanted(fleet, d) for d in devices}
    treated = {d for d, m in answers.items() if m["version"] == "1.1.0"}
    assert treated, "half of the non-holdout target is treated"
    assert len(treated) < len(devices)
    assert all(m["rollout_id"] == rollout["id"] for m in answers.values())
    assert wanted(fleet, outsider)["rollout_id"] is None, "the selector leaves other devices alone"

    done = fleet.client.post(f"/v1/admin/rollouts/{rollout['id']}/rollback", headers=fleet.admin())
    assert done.status_code == 200, done.text
    for device_id in treated:
        device = next(d for d in devices if d.id == device_id)
        back = wanted(fleet, device, running="1.1.0", release=2)
        assert (back["version"], back["rollback"]) == ("1.0.0", True)


def test_the_cohort_of_a_device_is_the_engines_sticky_bucket(fleet, field, engine):
    devices, _ = field
    rollout = start(fleet)
    with session_factory(engine)() as session:
        salt = session.get(RolloutRow, rollout["id"]).salt
    for device in devices:
        cohort = assign(salt, device.id, {"ring": "field"}, holdout_percent=30, percent=50)
        expected = "1.1.0" if cohort is Cohort.TREATED else "1.0.0"
        assert wanted(fleet, device)["version"] == expected


def test_a_device_pin_still_wins_over_a_rollout(fleet, field):
    devices, _ = field
    start(fleet)
    for device in devices:
        fleet.pin("1.0.0", device=device)
    assert {wanted(fleet, d)["version"] for d in devices} == {"1.0.0"}


def test_a_plan_that_cannot_detect_its_margin_is_refused_unless_forced(fleet, field):
    tight = {
        **SPEC,
        "gates": [{"metric": "error_rate", "margin": 0.0001}],
        "planning": {"device_sd": {"error_rate": 0.05}},
    }
    refused = fleet.client.post("/v1/admin/rollouts", json=tight, headers=fleet.admin())
    assert refused.status_code == 409
    assert refused.json()["error"] == "plan_infeasible"
    assert "compared devices but the stage reaches only" in refused.json()["message"]
    small = fleet.client.post("/v1/admin/rollouts", json=SPEC, headers=fleet.admin())
    assert small.status_code == 409
    assert "each arm needs 20 devices before the gate decides" in small.json()["message"]
    plan = fleet.client.post("/v1/admin/rollouts/plan", json=tight, headers=fleet.admin("viewer")).json()
    assert plan["feasible"] is False
    assert plan["target_devices"] == 24
    forced = start(fleet, tight)
    assert forced["state"] == "canary"


def test_a_spec_naming_an_unknown_version_or_field_is_refused(fleet, field):
    unknown = fleet.client.post("/v1/admin/rollouts", json={**SPEC, "version": "9.9.9"}, headers=fleet.admin())
    assert unknown.status_code == 404
    bad = fleet.client.post("/v1/admin/rollouts", json={**SPEC, "stages": [{"percent": 40}]}, headers=fleet.admin())
    assert bad.status_code in {400, 422}
    assert "100" in bad.text


def test_a_second_rollout_of_the_same_model_waits_for_the_first(fleet, field):
    start(fleet)
    again = fleet.client.post("/v1/admin/rollouts", json=SPEC, headers=fleet.admin())
    assert again.status_code == 409
    assert again.json()["error"] == "rollout_in_progress"


def test_reconcile_on_demand_and_the_status_shows_the_latest_look(fleet, field):
    rollout = start(fleet)
    moved = fleet.client.post("/v1/admin/rollouts/reconcile", headers=fleet.admin())
    assert moved.status_code == 200
    assert moved.json() == {"moved": []}
    status = fleet.client.get(f"/v1/admin/rollouts/{rollout['id']}", headers=fleet.admin("viewer")).json()
    assert "gates not yet shown non-inferior" in status["last_evaluation"]["reason"]
    sizes = status["last_evaluation"]["cohorts"]
    assert sum(sizes.values()) == 24
    assert sizes["lab"] == 0
    assert sizes["treated"] > 0
    assert sizes["holdout"] > 0
    assert [d["event"] for d in status["decisions"]] == ["start"]
