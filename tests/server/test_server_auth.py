"""Who may call what: one table of every route and the least role it needs, checked for every caller."""

import pytest
from sqlalchemy import select

from modelfleet.store import SummaryRow

VIEWER, RELEASE, ADMIN = "viewer", "release-manager", "admin"
RANK = {VIEWER: 0, RELEASE: 1, ADMIN: 2}

# Every admin route, the least role it needs, and a body. Path ids name objects the scenario has.
ADMIN_ROUTES = [
    ("GET", "/v1/admin/bundles", VIEWER, None),
    ("GET", "/v1/admin/bundles/{model}/{version}", VIEWER, None),
    ("GET", "/v1/admin/models", VIEWER, None),
    ("GET", "/v1/admin/models/{model}/lineage/{version}", VIEWER, None),
    ("GET", "/v1/admin/models/{model}/aliases", VIEWER, None),
    ("GET", "/v1/admin/models/{model}/aliases/{alias}/history", VIEWER, None),
    ("GET", "/v1/admin/devices", VIEWER, None),
    ("GET", "/v1/admin/devices/{device_id}", VIEWER, None),
    ("GET", "/v1/admin/pins", VIEWER, None),
    ("GET", "/v1/admin/events", VIEWER, None),
    ("GET", "/v1/admin/audit", VIEWER, None),
    ("GET", "/v1/admin/deliveries", VIEWER, None),
    ("GET", "/v1/admin/telemetry/windows", VIEWER, None),
    ("POST", "/v1/admin/bundles", RELEASE, "bundle"),
    ("PUT", "/v1/admin/models/{model}/aliases/{alias}", RELEASE, {"version": "1.1.0"}),
    ("POST", "/v1/admin/bundles/{model}/{version}/yank", RELEASE, {"reason": "bad calibration"}),
    ("POST", "/v1/admin/pins", ADMIN, {"model": "digits", "version": "1.1.0", "selector": {"site": "a"}}),
    ("DELETE", "/v1/admin/pins/{pin_id}", ADMIN, None),
    ("PUT", "/v1/admin/devices/{device_id}/tags", ADMIN, {"tags": {"site": "a", "ring": "1"}}),
    ("POST", "/v1/admin/devices/preauthorize", ADMIN, {"device_id": "dev-p", "public_key": "A" * 43 + "="}),
    ("POST", "/v1/admin/tokens", ADMIN, {"name": "ci", "role": "viewer"}),
    ("POST", "/v1/admin/enrollment-tokens", ADMIN, {"max_uses": 2}),
    ("POST", "/v1/admin/devices/{device_id}/approve", ADMIN, None),
    ("POST", "/v1/admin/devices/{device_id}/revoke", ADMIN, None),
    ("POST", "/v1/admin/devices/{device_id}/wake", ADMIN, None),
    ("GET", "/v1/admin/models/{name}/versions/{version}/drift", VIEWER, None),
    ("GET", "/v1/admin/rollouts", VIEWER, None),
    ("GET", "/v1/admin/rollouts/{rollout_id}", VIEWER, None),
    ("POST", "/v1/admin/rollouts/plan", VIEWER, "spec"),
    ("POST", "/v1/admin/rollouts", ADMIN, "spec"),
    ("POST", "/v1/admin/rollouts/{rollout_id}/approve", RELEASE, None),
    ("POST", "/v1/admin/rollouts/{rollout_id}/pause", ADMIN, None),
    ("POST", "/v1/admin/rollouts/{rollout_id}/resume", ADMIN, None),
    ("POST", "/v1/admin/rollouts/{rollout_id}/abort", ADMIN, None),
    ("POST", "/v1/admin/rollouts/{rollout_id}/rollback", ADMIN, None),
    ("POST", "/v1/admin/rollouts/reconcile", ADMIN, None),
    ("GET", "/v1/admin/experiments", VIEWER, None),
    ("GET", "/v1/admin/experiments/{experiment_id}", VIEWER, None),
    ("POST", "/v1/admin/experiments/plan", VIEWER, "experiment"),
    ("POST", "/v1/admin/experiments", ADMIN, "experiment"),
    ("POST", "/v1/admin/experiments/{experiment_id}/stop", ADMIN, None),
    ("POST", "/v1/admin/experiments/{experiment_id}/promote", ADMIN, None),
]
EXPERIMENT = {
    "model": "digits",
    "variants": [{"version": "1.0.0", "share": 50}, {"version": "1.1.0", "share": 50}],
    "metrics": [{"metric": "error_rate"}],
    "minimum_detectable_effect": 0.05,
    "device_sd": 0.01,
}
SPEC = {
    "model": "digits",
    "version": "1.1.0",
    "stages": [{"percent": 100}],
    "gates": [{"metric": "error_rate", "margin": 0.01}],
    "planning": {"device_sd": {"error_rate": 0.01}},
}
DEVICE_ROUTES = [
    ("POST", "/v1/devices/checkin", "checkin"),
    ("GET", "/v1/artifacts/{sha256}", None),
    ("POST", "/v1/telemetry", {"summaries": []}),
    ("POST", "/v1/events", {"events": []}),
]
OPEN_ROUTES = {
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/v1/devices/enroll",
}
IDS = {
    "model": "digits", "version": "1.0.0", "alias": "stable", "device_id": "dev-a", "pin_id": "1",
    "rollout_id": "ro-0000000000", "name": "digits", "experiment_id": "ex-0000000000",
}  # fmt: skip
QUERY = {"/v1/admin/telemetry/windows": {"model": "digits"}, "/v1/admin/deliveries": {"model": "digits"}}


class Scenario:
    """Two devices with their own pinned versions, one stored summary of B's."""

    def __init__(self, fleet):
        self.fleet = fleet
        assert fleet.upload("1.0.0").status_code == 201
        assert fleet.upload("1.1.0").status_code == 201
        self.a = fleet.device("dev-a", tags={"site": "a"})
        self.b = fleet.device("dev-b", tags={"site": "b"})
        fleet.pin("1.0.0", device=self.a)
        fleet.pin("1.1.0", device=self.b)
        self.sha = {d.id: fleet.checkin(d).json()["desired"][0]["artifact"]["sha256"] for d in (self.a, self.b)}

    def call(self, method, template, body, headers, device=None):
        path = template.format(**IDS, sha256=self.sha[(device or self.a).id])
        params = QUERY.get(template)
        if body == "bundle":
            content = self.fleet.bundles["1.2.0"].read_bytes()
            return self.fleet.client.request(method, path, content=content, headers=headers)
        if body == "spec":
            body = SPEC
        if body == "experiment":
            body = EXPERIMENT
        if body == "checkin":
            body = {"inventory": self.fleet.PROFILE.model_dump(mode="json"), "installed": []}
        return self.fleet.client.request(method, path, json=body, headers=headers, params=params)


@pytest.fixture
def scenario(fleet):
    return Scenario(fleet)


def test_the_tables_cover_every_route(app):
    served = {(m.upper(), path) for path, methods in app.openapi()["paths"].items() for m in methods}
    listed = {(m, path) for m, path, _, _ in ADMIN_ROUTES} | {(m, path) for m, path, _ in DEVICE_ROUTES}
    assert {(m, path) for m, path in served if path not in OPEN_ROUTES} == listed


def test_each_role_reaches_exactly_the_routes_of_its_rank(scenario, fleet):
    refused = []
    for role in (VIEWER, RELEASE, ADMIN):
        for method, path, least, body in ADMIN_ROUTES:
            response = scenario.call(method, path, body, fleet.admin(role))
            allowed = RANK[role] >= RANK[least]
            if allowed and response.status_code in {401, 403}:
                refused.append((role, method, path, response.status_code, response.text))
            if not allowed and response.status_code != 403:
                refused.append((role, method, path, response.status_code, "expected 403"))
            if not allowed:
                assert response.json()["error"] == "role_forbidden"
    assert refused == []


def test_denied_writes_change_nothing(scenario, fleet):
    for method, path, least, body in ADMIN_ROUTES:
        if least != VIEWER:
            assert scenario.call(method, path, body, fleet.admin(VIEWER)).status_code == 403
    bundles = fleet.client.get("/v1/admin/bundles", headers=fleet.admin()).json()
    assert [(b["version"], b["yanked_at"]) for b in bundles] == [("1.1.0", None), ("1.0.0", None)]
    assert fleet.client.get("/v1/admin/devices/dev-a", headers=fleet.admin()).json()["status"] == "accepted"
    assert len(fleet.client.get("/v1/admin/pins", headers=fleet.admin()).json()) == 2


@pytest.mark.parametrize("who", ["device", "nobody", "garbage", "basic"])
def test_admin_routes_refuse_anything_but_an_admin_token(scenario, who):
    headers = {
        "device": scenario.a.headers,
        "nobody": {},
        "garbage": {"Authorization": "Bearer mfa_not-a-token"},
        "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }[who]
    statuses = {path: scenario.call(method, path, body, headers).status_code for method, path, _, body in ADMIN_ROUTES}
    assert set(statuses.values()) == {401}, statuses


@pytest.mark.parametrize("who", ["admin", "nobody", "revoked", "pending"])
def test_device_routes_refuse_anything_but_an_accepted_device(scenario, fleet, who):
    if who == "revoked":
        response = fleet.client.post(f"/v1/admin/devices/{scenario.b.id}/revoke", headers=fleet.admin())
        assert response.status_code == 200
        headers = scenario.b.headers
    elif who == "pending":
        pending = fleet.new_device("dev-pending")
        assert fleet.enroll(pending).status_code == 202
        headers = {"Authorization": "Bearer mfd_never-issued"}
    else:
        headers = {"admin": fleet.admin(), "nobody": {}}[who]
    statuses = {path: scenario.call(m, path, body, headers, scenario.b).status_code for m, path, body in DEVICE_ROUTES}
    assert set(statuses.values()) == {401}, statuses


def test_revocation_takes_effect_on_the_next_request(scenario, fleet):
    assert fleet.checkin(scenario.b).status_code == 200
    fleet.client.post(f"/v1/admin/devices/{scenario.b.id}/revoke", headers=fleet.admin())
    response = fleet.checkin(scenario.b)
    assert response.status_code == 401
    assert response.json() == {
        "error": "bad_credential",
        "message": "the device credential is not known or was revoked",
        "field": None,
    }


def test_a_device_cannot_download_another_devices_artifact(scenario, fleet):
    response = fleet.client.get(f"/v1/artifacts/{scenario.sha[scenario.b.id]}", headers=scenario.a.headers)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_artifact"
    own = fleet.client.get(f"/v1/artifacts/{scenario.sha[scenario.a.id]}", headers=scenario.a.headers)
    assert own.status_code == 200
    unknown = fleet.client.get(f"/v1/artifacts/{'0' * 64}", headers=scenario.a.headers)
    assert unknown.status_code == 404
    other = scenario.sha[scenario.b.id]
    assert unknown.text.replace("0" * 64, other) == response.text  # the same answer whether it exists or not


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/devices/checkin",
            {"device_id": "dev-b", "inventory": {"arch": "x", "ram_bytes": 1, "disk_free_bytes": 1}},
        ),
        ("/v1/telemetry", {"device_id": "dev-b", "summaries": []}),
        ("/v1/events", {"device_id": "dev-b", "events": []}),
    ],
    ids=["checkin", "telemetry", "events"],
)
def test_a_forged_device_id_in_a_body_is_refused_as_an_unknown_field(scenario, fleet, path, body):
    response = fleet.client.post(path, json=body, headers=scenario.a.headers)
    assert response.status_code == 422
    assert response.json()["field"] == "device_id"


def test_telemetry_is_stored_under_the_callers_id_and_cannot_overwrite_anothers(scenario, fleet, engine, summary):
    theirs = summary(id="summary-b-0001", n=10)
    assert fleet.client.post("/v1/telemetry", json={"summaries": [theirs]}, headers=scenario.b.headers).json() == {
        "accepted": 1,
        "duplicates": 0,
    }
    forged = {**theirs, "n": 999}
    answer = fleet.client.post("/v1/telemetry", json={"summaries": [forged]}, headers=scenario.a.headers).json()
    assert answer == {"accepted": 0, "duplicates": 1}
    with engine.connect() as connection:
        row = connection.execute(select(SummaryRow.device_id, SummaryRow.n)).one()
    assert tuple(row) == ("dev-b", 10)
