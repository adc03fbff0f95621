"""``POST /v1/admin/devices/{id}/wake``: admins only, known devices only, audited; without a broker
nothing is sent and the answer says the device checks in at its next poll. Delivery through a real
Mosquitto is tested end to end in ``tests/agent/test_daemon.py`` and ``tests/agent/test_wake.py``."""

import pytest

from modelfleet.server._wake import NoWakePublisher


def test_waking_without_a_broker_is_accepted_and_says_so(fleet, app):
    assert isinstance(app.state.wake, NoWakePublisher)
    fleet.device("dev-1")
    response = fleet.client.post("/v1/admin/devices/dev-1/wake", headers=fleet.admin())
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["device_id"], body["sent"]) == ("dev-1", False)
    assert "next poll" in body["detail"]
    audit = fleet.client.get("/v1/admin/audit", params={"action": "device.wake"}, headers=fleet.admin()).json()
    assert [entry["target"] for entry in audit] == ["dev-1"]


@pytest.mark.parametrize("role", ["viewer", "release-manager"])
def test_only_admins_wake_devices(fleet, role):
    fleet.device("dev-1")
    response = fleet.client.post("/v1/admin/devices/dev-1/wake", headers=fleet.admin(role))
    assert response.status_code == 403


def test_an_unknown_device_is_not_found(fleet):
    response = fleet.client.post("/v1/admin/devices/nobody-1/wake", headers=fleet.admin())
    assert response.status_code == 404
