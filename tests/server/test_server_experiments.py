"""A/B experiments over the real app: check-ins get their variant, status reads the analysis, stop returns them."""

import pytest

SPEC = {
    "model": "digits",
    "selector": {"ring": "field"},
    "variants": [{"version": "1.0.0", "share": 50}, {"version": "1.1.0", "share": 50}],
    "metrics": [{"metric": "mean_confidence"}, {"metric": "error_rate"}],
    "minimum_detectable_effect": 0.05,
    "device_sd": 0.01,
}


@pytest.fixture
def field(fleet):
    for version in ("1.0.0", "1.1.0"):
        assert fleet.upload(version).status_code == 201
    fleet.pin("1.0.0", selector={})
    return [fleet.device(f"dev-{i:02d}", tags={"ring": "field"}) for i in range(20)]


def versions(fleet, devices):
    out = {}
    for device in devices:
        answer = fleet.checkin(device, installed_models=[fleet.installed("1.0.0", 1)])
        assert answer.status_code == 200, answer.text
        (model,) = answer.json()["desired"]
        out[device.id] = (model["version"], model["experiment_id"])
    return out


def test_devices_get_their_variant_and_go_back_when_the_experiment_stops(fleet, field):
    started = fleet.client.post("/v1/admin/experiments", json=SPEC, headers=fleet.admin(), params={"force": "true"})
    assert started.status_code == 201, started.text
    experiment = started.json()
    assert experiment["state"] == "running"
    assert experiment["analysis"]["verdict"] == "inconclusive"

    during = versions(fleet, field)
    assert {v for v, _ in during.values()} == {"1.0.0", "1.1.0"}
    assert {e for _, e in during.values()} == {experiment["id"]}
    assert versions(fleet, field) == during, "variants are sticky"

    status = fleet.client.get(f"/v1/admin/experiments/{experiment['id']}", headers=fleet.admin("viewer"))
    assert status.status_code == 200
    assert status.json()["analysis"]["devices"] == [0, 0]

    stopped = fleet.client.post(f"/v1/admin/experiments/{experiment['id']}/stop", headers=fleet.admin())
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "stopped"
    assert set(versions(fleet, field).values()) == {("1.0.0", None)}
    again = fleet.client.post(f"/v1/admin/experiments/{experiment['id']}/stop", headers=fleet.admin())
    assert again.status_code == 409
    assert again.json()["error"] == "bad_transition"


def test_the_plan_uses_the_target_and_refuses_what_it_cannot_power(fleet, field):
    plan = fleet.client.post("/v1/admin/experiments/plan", json=SPEC, headers=fleet.admin("viewer"))
    assert plan.status_code == 200, plan.text
    assert plan.json()["feasible"] is False
    refused = fleet.client.post("/v1/admin/experiments", json=SPEC, headers=fleet.admin())
    assert refused.status_code == 409
    assert refused.json()["error"] == "plan_infeasible"


def test_an_experiment_naming_an_unknown_version_is_refused(fleet, field):
    spec = {**SPEC, "variants": [{"version": "1.0.0", "share": 50}, {"version": "9.9.9", "share": 50}]}
    refused = fleet.client.post("/v1/admin/experiments", json=spec, headers=fleet.admin(), params={"force": "true"})
    assert refused.status_code == 404


MODES = ["active", "shadow", "time_slice"]


@pytest.mark.parametrize("kind", ["shadow", "time_slice"])
def test_a_paired_experiment_enrolls_only_agents_that_run_its_mode(fleet, field, kind):
    old, new = field[0], field[1]
    before = fleet.checkin(old, installed_models=[fleet.installed("1.0.0", 1)])
    spec = {**SPEC, "kind": kind, "within_sd": 0.01}
    started = fleet.client.post("/v1/admin/experiments", json=spec, headers=fleet.admin(), params={"force": "true"})
    assert started.status_code == 201, started.text

    unchanged = fleet.checkin(old, installed_models=[fleet.installed("1.0.0", 1)], etag=before.headers["etag"])
    assert unchanged.status_code == 304, "an agent that does not report the mode is not enrolled"
    answer = fleet.checkin(new, installed_models=[{**fleet.installed("1.0.0", 1), "modes": MODES}])
    (desired,) = answer.json()["desired"]
    assert (desired["version"], desired["mode"], desired["experiment_id"]) == ("1.0.0", kind, started.json()["id"])
    candidate = desired["candidate"]
    assert candidate["version"] == "1.1.0"
    assert (candidate["time_slice"] is None) == (kind == "shadow")
    artifact = fleet.client.get(candidate["artifact"]["url"].split("testserver")[-1], headers=new.headers)
    assert artifact.status_code == 200, "the candidate's bundle is the device's to download"

    fleet.client.post(f"/v1/admin/experiments/{started.json()['id']}/stop", headers=fleet.admin())
    after = fleet.checkin(new, installed_models=[{**fleet.installed("1.0.0", 1), "modes": MODES}])
    (back,) = after.json()["desired"]
    assert (back["mode"], "candidate" in back) == ("active", False)
