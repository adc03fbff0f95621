"""Enrollment: token, pre-authorization, pending then approval, and every way it is refused."""

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def post(fleet, body):
    return fleet.client.post("/v1/devices/enroll", content=body, headers={"Content-Type": "application/json"})


def test_a_valid_enrollment_token_accepts_at_once_and_applies_its_tags(fleet):
    device = fleet.new_device("pi-0001")
    response = fleet.enroll(device, token=fleet.enrollment_token(tags={"site": "berlin"}))
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "accepted"
    assert answer["credential"].startswith("mfd_")
    assert answer["poll_seconds"] == 300
    record = fleet.client.get("/v1/admin/devices/pi-0001", headers=fleet.admin()).json()
    assert (record["status"], record["tags"]) == ("accepted", {"site": "berlin"})
    assert fleet.checkin(device).status_code == 200


def test_a_preauthorized_identity_is_accepted_without_a_token(fleet):
    device = fleet.new_device("pi-0002")
    body = {"device_id": device.id, "public_key": device.public_key, "tags": {"ring": "lab"}}
    assert fleet.client.post("/v1/admin/devices/preauthorize", json=body, headers=fleet.admin()).status_code == 201
    assert fleet.enroll(device).status_code == 200
    assert fleet.client.get(f"/v1/admin/devices/{device.id}", headers=fleet.admin()).json()["tags"] == {"ring": "lab"}


def test_a_preauthorization_for_another_key_refuses_the_device(fleet):
    device, impostor = fleet.new_device("pi-0003"), fleet.new_device("pi-0003")
    body = {"device_id": device.id, "public_key": device.public_key}
    fleet.client.post("/v1/admin/devices/preauthorize", json=body, headers=fleet.admin())
    response = fleet.enroll(impostor)
    assert (response.status_code, response.json()["error"]) == (409, "key_mismatch")


def test_without_token_the_device_waits_pending_until_an_admin_approves(fleet):
    device = fleet.new_device("pi-0004")
    first = fleet.enroll(device)
    assert first.status_code == 202
    assert first.json() == {"status": "pending", "device_id": device.id, "credential": None, "poll_seconds": 300}
    assert fleet.enroll(device).status_code == 202  # polling keeps it pending
    listed = fleet.client.get("/v1/admin/devices", params={"status": "pending"}, headers=fleet.admin()).json()
    assert [d["id"] for d in listed] == [device.id]
    approved = fleet.client.post(f"/v1/admin/devices/{device.id}/approve", headers=fleet.admin())
    assert approved.json()["status"] == "accepted"
    assert fleet.enroll(device).status_code == 200
    assert fleet.checkin(device).status_code == 200


def test_enrolling_again_rotates_the_credential(fleet):
    device = fleet.device("pi-0005")
    old = device.credential
    assert fleet.enroll(device).status_code == 200
    assert device.credential != old
    assert (
        fleet.client.post(
            "/v1/telemetry", json={"summaries": []}, headers={"Authorization": f"Bearer {old}"}
        ).status_code
        == 401
    )
    assert fleet.checkin(device).status_code == 200


def test_a_revoked_device_cannot_enroll_its_way_back(fleet):
    device = fleet.device("pi-0006")
    fleet.client.post(f"/v1/admin/devices/{device.id}/revoke", headers=fleet.admin())
    response = fleet.enroll(device, token=fleet.enrollment_token())
    assert (response.status_code, response.json()["error"]) == (403, "device_revoked")


@pytest.mark.parametrize(
    ("forge", "status", "code"),
    [
        ("signed_by_another_key", 401, "bad_proof"),
        ("proof_not_base64", 401, "bad_proof"),
        ("proof_too_long", 422, "invalid"),
        ("message_altered", 401, "bad_proof"),
    ],
)
def test_a_wrong_proof_is_refused(fleet, clock, forge, status, code):
    device = fleet.new_device("pi-0007")
    clock.advance(1)
    if forge == "signed_by_another_key":
        body = device.enroll_body(clock.now(), proof_key=Ed25519PrivateKey.generate())
    else:
        body = device.enroll_body(clock.now())
        proof = body.split('"proof":"')[1].split('"')[0]
        replacement = {
            "proof_not_base64": "!!!not-base64!!!",
            "proof_too_long": "A" * 200,
            "message_altered": base64.b64encode(bytes(64)).decode(),
        }[forge]
        body = body.replace(proof, replacement)
    response = post(fleet, body)
    assert (response.status_code, response.json()["error"]) == (status, code)


def test_a_replayed_request_is_refused(fleet, clock):
    device = fleet.new_device("pi-0008")
    clock.advance(1)
    captured = device.enroll_body(clock.now(), fleet.enrollment_token())
    assert post(fleet, captured).status_code == 200
    replay = post(fleet, captured)
    assert (replay.status_code, replay.json()["error"]) == (401, "replayed")


@pytest.mark.parametrize("offset_minutes", [-11, 11])
def test_a_request_from_a_skewed_clock_is_refused(fleet, clock, offset_minutes):
    device = fleet.new_device("pi-0009")
    response = fleet.enroll(device, issued_at=clock.now() + timedelta(minutes=offset_minutes))
    assert (response.status_code, response.json()["error"]) == (401, "clock_skew")


def test_a_naive_timestamp_is_refused_naming_the_field(fleet, clock):
    device = fleet.new_device("pi-0010")
    response = fleet.enroll(device, issued_at=clock.now().replace(tzinfo=None))
    assert (response.status_code, response.json()["field"]) == (422, "issued_at")


def test_another_key_for_a_known_device_id_is_a_conflict(fleet):
    fleet.device("pi-0011")
    response = fleet.enroll(fleet.new_device("pi-0011"), token=fleet.enrollment_token())
    assert (response.status_code, response.json()["error"]) == (409, "key_mismatch")


def test_a_token_admits_only_as_many_devices_as_it_has_uses(fleet):
    token = fleet.enrollment_token(max_uses=2)
    statuses = [fleet.enroll(fleet.new_device(f"pi-01{i:02d}"), token=token) for i in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 403]
    assert statuses[2].json()["error"] == "enroll_token_exhausted"


def test_a_token_stops_working_when_it_expires(fleet, clock):
    token = fleet.enrollment_token(max_uses=5, expires_in_seconds=60)
    assert fleet.enroll(fleet.new_device("pi-0201"), token=token).status_code == 200
    clock.advance(60)
    response = fleet.enroll(fleet.new_device("pi-0202"), token=token)
    assert (response.status_code, response.json()["error"]) == (403, "enroll_token_expired")


def test_an_unknown_token_is_refused(fleet):
    response = fleet.enroll(fleet.new_device("pi-0301"), token="mfe_made-up")  # noqa: S106 - a made-up token
    assert (response.status_code, response.json()["error"]) == (401, "unknown_enroll_token")


def test_new_devices_and_issued_credentials_are_audited_but_pending_polls_are_not(fleet):
    fleet.device("pi-0401")
    pending = fleet.new_device("pi-0402")
    for _ in range(3):
        fleet.enroll(pending)
    actions = [e["action"] for e in fleet.client.get("/v1/admin/audit", headers=fleet.admin()).json()]
    assert actions.count("device.enroll.accepted") == 1
    assert actions.count("device.enroll.pending") == 1
