"""Fleet administration: listing by status and tag, tags, pre-authorization, approval and revocation."""

import pytest


@pytest.fixture
def fleet_of_three(fleet):
    fleet.device("dev-berlin-1", tags={"site": "berlin", "ring": "canary"})
    fleet.device("dev-berlin-2", tags={"site": "berlin", "ring": "stable"})
    fleet.enroll(fleet.new_device("dev-paris-1"))
    return fleet


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["dev-berlin-1", "dev-berlin-2", "dev-paris-1"]),
        ({"status": "pending"}, ["dev-paris-1"]),
        ({"tag": "site=berlin"}, ["dev-berlin-1", "dev-berlin-2"]),
        ({"tag": ["site=berlin", "ring=canary"]}, ["dev-berlin-1"]),
        ({"tag": "site=tokyo"}, []),
        ({"limit": 1, "offset": 1}, ["dev-berlin-2"]),
    ],
)
def test_devices_are_listed_by_status_and_tags(fleet_of_three, params, expected):
    listed = fleet_of_three.client.get("/v1/admin/devices", params=params, headers=fleet_of_three.admin("viewer"))
    assert [d["id"] for d in listed.json()] == expected


def test_a_malformed_tag_filter_is_refused(fleet):
    response = fleet.client.get("/v1/admin/devices", params={"tag": "no-equals-sign"}, headers=fleet.admin())
    assert (response.status_code, response.json()["error"]) == (422, "bad_tag_filter")


def test_tags_are_replaced_and_select_pins(fleet):
    fleet.upload("1.0.0")
    device = fleet.device("dev-1", tags={"site": "berlin"})
    fleet.pin("1.0.0", selector={"ring": "canary"})
    assert fleet.checkin(device).json()["desired"] == []
    response = fleet.client.put(
        "/v1/admin/devices/dev-1/tags", json={"tags": {"ring": "canary"}}, headers=fleet.admin()
    )
    assert response.json()["tags"] == {"ring": "canary"}
    assert [d["version"] for d in fleet.checkin(device).json()["desired"]] == ["1.0.0"]


def test_the_device_record_shows_what_it_reported_and_when_it_was_seen(fleet, app, engine, clock):
    device = fleet.device("dev-1")
    fleet.checkin(device, installed_models=[fleet.installed("1.0.0", 1)])
    app.state.server.last_seen.flush(engine)
    record = fleet.client.get("/v1/admin/devices/dev-1", headers=fleet.admin("viewer")).json()
    assert record["inventory"]["arch"] == "aarch64"
    assert record["installed"][0]["version"] == "1.0.0"
    assert record["last_seen_at"] == clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "credential" not in str(record)


def test_preauthorizing_a_pending_device_with_its_key_accepts_it(fleet):
    device = fleet.new_device("dev-1")
    assert fleet.enroll(device).status_code == 202
    body = {"device_id": device.id, "public_key": device.public_key}
    assert fleet.client.post("/v1/admin/devices/preauthorize", json=body, headers=fleet.admin()).status_code == 201
    assert fleet.enroll(device).status_code == 200


def test_preauthorizing_a_known_device_with_another_key_is_a_conflict(fleet):
    fleet.device("dev-1")
    body = {"device_id": "dev-1", "public_key": fleet.new_device("dev-1").public_key}
    response = fleet.client.post("/v1/admin/devices/preauthorize", json=body, headers=fleet.admin())
    assert (response.status_code, response.json()["error"]) == (409, "key_mismatch")


@pytest.mark.parametrize("action", ["approve", "revoke"])
def test_managing_an_unknown_device_is_404(fleet, action):
    response = fleet.client.post(f"/v1/admin/devices/dev-none/{action}", headers=fleet.admin())
    assert (response.status_code, response.json()["error"]) == (404, "unknown_device")


def test_a_revoked_device_can_be_readmitted_and_enrolls_again(fleet):
    device = fleet.device("dev-1")
    fleet.client.post("/v1/admin/devices/dev-1/revoke", headers=fleet.admin())
    assert fleet.checkin(device).status_code == 401
    readmitted = fleet.client.post("/v1/admin/devices/dev-1/approve", headers=fleet.admin()).json()
    assert (readmitted["status"], readmitted["revoked_at"]) == ("accepted", None)
    assert fleet.checkin(device).status_code == 401  # the old credential stays dead
    assert fleet.enroll(device).status_code == 200
    assert fleet.checkin(device).status_code == 200


def test_admin_actions_are_audited(fleet):
    fleet.device("dev-1")
    fleet.client.put("/v1/admin/devices/dev-1/tags", json={"tags": {"a": "b"}}, headers=fleet.admin())
    fleet.client.post("/v1/admin/devices/dev-1/revoke", headers=fleet.admin())
    entries = fleet.client.get("/v1/admin/audit", headers=fleet.admin("viewer")).json()
    assert [(e["action"], e["target"]) for e in entries[:2]] == [("device.revoke", "dev-1"), ("device.tags", "dev-1")]
    assert entries[0]["actor"].endswith(":test-admin")
    only = fleet.client.get("/v1/admin/audit", params={"action": "device.tags"}, headers=fleet.admin("viewer")).json()
    assert [e["detail"] for e in only] == [{"a": "b"}]
