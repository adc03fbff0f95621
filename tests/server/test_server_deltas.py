"""Deltas on the server: wanted by a check-in, built once in a bounded child, offered beside the full link.

The background builder is slowed to once an hour here so each test drives the
build itself (``build_wanted``) and sees each step; the real loop runs in the
simulator and the demo.
"""

import hashlib

import pytest

from modelfleet.bundle.delta import apply
from modelfleet.server._deltas import DeltaSettings, build_wanted
from modelfleet.store import find_deltas


def settings(**overrides):
    return DeltaSettings(check_seconds=3600, recheck_seconds=0, **overrides)


@pytest.fixture
def server_config(server_config):
    return server_config.model_copy(update={"deltas": settings()})


@pytest.fixture
def registry(fleet):
    for version in ("1.0.0", "1.1.0"):
        assert fleet.upload(version).status_code == 201
    return fleet


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def server(fleet):
    return fleet.client.app.state.server


def build(fleet, delta_settings=None):
    state = server(fleet)
    wanted = state.resolver.take_wanted()
    return build_wanted(wanted, state.engine, state.blobs, state.clock, delta_settings or settings())


def update_from_1_0_0(fleet, device):
    fleet.pin("1.1.0", device=device)
    return fleet.checkin(device, installed_models=[fleet.installed("1.0.0", 1)])


def test_a_built_delta_is_offered_and_rebuilds_the_bundle(registry, tmp_path):
    device = registry.device("dev-1")
    first = update_from_1_0_0(registry, device)
    assert first.json()["desired"][0]["delta"] is None
    (record,) = build(registry)
    assert (record.status, record.base_sha256, record.target_sha256) == (
        "ready", sha256(registry.bundles["1.0.0"]), sha256(registry.bundles["1.1.0"]),
    )  # fmt: skip
    second = registry.checkin(device, installed_models=[registry.installed("1.0.0", 1)], etag=first.headers["ETag"])
    assert second.status_code == 200, "the offer changes the answer, so the ETag too"
    offer = second.json()["desired"][0]["delta"]
    assert offer == {"url": f"http://testserver/v1/artifacts/{record.sha256}", "sha256": record.sha256,
                     "size": record.size}  # fmt: skip
    assert offer["size"] < second.json()["desired"][0]["artifact"]["size"] / 10
    download = registry.client.get(f"/v1/artifacts/{record.sha256}", headers=device.headers)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == record.sha256
    (tmp_path / "d.mfd").write_bytes(download.content)
    apply(registry.bundles["1.0.0"], tmp_path / "d.mfd", tmp_path / "rebuilt.mfb")
    assert (tmp_path / "rebuilt.mfb").read_bytes() == registry.bundles["1.1.0"].read_bytes()


def test_a_delta_is_served_only_to_a_device_it_is_offered_to(registry):
    device = registry.device("dev-1")
    update_from_1_0_0(registry, device)
    (record,) = build(registry)
    stranger = registry.device("dev-2")
    registry.checkin(stranger)
    assert registry.client.get(f"/v1/artifacts/{record.sha256}", headers=stranger.headers).status_code == 404


def test_a_device_that_runs_the_desired_version_asks_for_no_delta(registry):
    device = registry.device("dev-1")
    registry.pin("1.1.0", device=device)
    registry.checkin(device, installed_models=[registry.installed("1.1.0", 2)])
    registry.checkin(device)  # nothing installed: nothing to apply a delta to
    assert server(registry).resolver.take_wanted() == {}


def test_a_pair_is_built_once_however_many_devices_want_it(registry):
    for name in ("dev-1", "dev-2", "dev-3"):
        update_from_1_0_0(registry, registry.device(name))
    assert len(build(registry)) == 1
    update_from_1_0_0(registry, registry.device("dev-4"))
    assert build(registry) == [], "already ready: nothing to build"


def test_a_delta_that_saves_too_little_is_not_offered(registry):
    device = registry.device("dev-1")
    update_from_1_0_0(registry, device)
    (record,) = build(registry, settings(max_ratio=0.0001))
    assert record.status == "skipped"
    assert "over 0.0001 of the bundle" in record.reason
    answer = registry.checkin(device, installed_models=[registry.installed("1.0.0", 1)])
    assert answer.json()["desired"][0]["delta"] is None


def test_a_build_over_its_time_bound_is_killed_and_recorded(registry):
    device = registry.device("dev-1")
    update_from_1_0_0(registry, device)
    (record,) = build(registry, settings(build_seconds=0.05))
    assert record.status == "failed"
    assert record.reason == "the build took longer than 0.05 s"
    answer = registry.checkin(device, installed_models=[registry.installed("1.0.0", 1)])
    assert answer.json()["desired"][0]["delta"] is None
    with server(registry).engine.connect() as connection:
        assert [r.status for r in find_deltas(connection, [(record.base_sha256, record.target_sha256)]).values()] == [
            "failed"
        ]
