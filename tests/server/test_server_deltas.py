"""Deltas on the server: wanted by a check-in, built once in a bounded child, offered beside the full link.

The background builder is slowed to once an hour here so each test drives the
build itself (``build_wanted``) and sees each step; the real loop runs in the
simulator and the demo. A delta is built in the newest format the server writes and
the device reports it reads, and offered only if the device reads its file (ADR 0010,
addendum).
"""

import hashlib

import pytest

from modelfleet.bundle import BuildOptions, SigningKey, build_bundle
from modelfleet.bundle.delta import apply, read_delta_header
from modelfleet.server._deltas import DeltaSettings, build_wanted
from modelfleet.sim.models import fine_tuned
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
        key = (record.base_sha256, record.target_sha256, record.format_version)
        assert [r.status for r in find_deltas(connection, [key]).values()] == ["failed"]


# ------------------------------------------------------------------ the formats a device reads

TUNED = "1.3.0"


@pytest.fixture(scope="module")
def tuned(bundles, tmp_path_factory):
    """digits 1.3.0 (release 4): 1.0.0's weights fine-tuned, so the tensor codec wins its delta from 1.0.0."""
    directory = tmp_path_factory.mktemp("tuned")
    key = SigningKey.from_file(bundles.key_file.with_suffix(".key"))
    options = BuildOptions(name="digits", version=TUNED, release=4, labels=bundles.labels, dataset="digits")
    out = directory / f"digits-{TUNED}.mfb"
    build_bundle(fine_tuned(bundles.model, directory / "tuned.onnx"), bundles.validation, [key], out, options)
    return out


@pytest.fixture
def tuned_registry(registry, tuned):
    assert registry.upload(tuned).status_code == 201
    return registry


def running_1_0_0(fleet, device, formats, etag=None):
    """A check-in of a device on 1.0.0 whose agent reads ``formats`` (``None``: an agent before the field)."""
    entry = fleet.installed("1.0.0", 1)
    entry |= {} if formats is None else {"delta_formats": formats}
    return fleet.checkin(device, installed_models=[entry], etag=etag)


def delta_of(answer):
    assert answer.status_code == 200, answer.text
    return answer.json()["desired"][0]["delta"]


# what the agent reports -> the delta format the server asks its encoder for (None: no delta at all)
FORMAT_ASKED = {
    "nothing (an agent before the field)": (None, 1),
    "1": ([1], 1),
    "1 and 2": ([1, 2], 2),
    "2 and 1": ([2, 1], 2),
    "2": ([2], 2),
    "1, 2 and a newer one": ([1, 2, 3], 2),
    "only versions the server does not know": ([3, 7], None),
    "none (deltas off)": ([], None),
}


def test_a_delta_is_asked_for_in_the_newest_format_both_sides_know(tuned_registry):
    asked = {}
    for index, (case, (reported, _)) in enumerate(FORMAT_ASKED.items()):
        device = tuned_registry.device(f"dev-{index}")
        tuned_registry.pin(TUNED, device=device)
        assert delta_of(running_1_0_0(tuned_registry, device, reported)) is None, "nothing is built yet"
        wanted = server(tuned_registry).resolver.take_wanted()
        asked[case] = next((version for _, _, version in wanted), None)
    assert asked == {case: version for case, (_, version) in FORMAT_ASKED.items()}


@pytest.mark.parametrize("reported", [None, [1]], ids=["nothing reported", "1 reported"])
def test_a_device_that_reads_format_1_gets_a_format_1_delta_it_applies(tuned_registry, tuned, tmp_path, reported):
    device = tuned_registry.device("dev-1")
    tuned_registry.pin(TUNED, device=device)
    running_1_0_0(tuned_registry, device, reported)
    (record,) = build(tuned_registry)
    assert (record.status, record.format_version, record.codec) == ("ready", 1, "tensor")
    offer = delta_of(running_1_0_0(tuned_registry, device, reported))
    assert offer["sha256"] == record.sha256
    download = tuned_registry.client.get(f"/v1/artifacts/{record.sha256}", headers=device.headers)
    assert download.status_code == 200
    assert read_delta_header(download.content).format_version == 1
    (tmp_path / "d.mfd").write_bytes(download.content)
    apply(tuned_registry.bundles["1.0.0"], tmp_path / "d.mfd", tmp_path / "rebuilt.mfb")
    assert (tmp_path / "rebuilt.mfb").read_bytes() == tuned.read_bytes()


def test_a_device_sharing_no_format_with_the_server_gets_the_full_bundle_only(tuned_registry, tuned):
    unknown, known = tuned_registry.device("dev-1"), tuned_registry.device("dev-2")
    for device in (unknown, known):
        tuned_registry.pin(TUNED, device=device)
    answer = running_1_0_0(tuned_registry, unknown, [3])
    assert delta_of(answer) is None
    assert answer.json()["desired"][0]["artifact"]["sha256"] == sha256(tuned)
    assert server(tuned_registry).resolver.take_wanted() == {}, "no delta is built for it"
    running_1_0_0(tuned_registry, known, [1, 2])
    (record,) = build(tuned_registry)
    assert record.status == "ready", "a delta of that pair exists, in a format the first device does not read"
    assert delta_of(running_1_0_0(tuned_registry, unknown, [3])) is None
    assert tuned_registry.client.get(f"/v1/artifacts/{record.sha256}", headers=unknown.headers).status_code == 404


def test_each_format_is_its_own_delta_and_the_answer_and_its_etag_follow_what_the_device_reads(tuned_registry):
    device = tuned_registry.device("dev-1")
    tuned_registry.pin(TUNED, device=device)
    running_1_0_0(tuned_registry, device, [1])
    (format_1,) = build(tuned_registry)
    running_1_0_0(tuned_registry, device, [1, 2])
    (format_2,) = build(tuned_registry)
    assert (format_1.format_version, format_2.format_version) == (1, 2)
    assert format_1.sha256 != format_2.sha256
    old = running_1_0_0(tuned_registry, device, [1])
    assert delta_of(old)["sha256"] == format_1.sha256
    updated = running_1_0_0(tuned_registry, device, [1, 2], etag=old.headers["ETag"])
    assert delta_of(updated)["sha256"] == format_2.sha256
    assert updated.headers["ETag"] != old.headers["ETag"]
    unknown = running_1_0_0(tuned_registry, device, [9], etag=updated.headers["ETag"])
    assert delta_of(unknown) is None
    assert unknown.headers["ETag"] not in {old.headers["ETag"], updated.headers["ETag"]}
    again = running_1_0_0(tuned_registry, device, [1, 2], etag=updated.headers["ETag"])
    assert again.status_code == 304, "the same report, the same answer"


def test_a_generic_delta_is_format_1_and_offered_only_to_devices_that_read_format_1(registry):
    # 1.0.0 -> 1.1.0 changes no weight: a generic delta wins, and generic deltas are written as format 1.
    only_2, both = registry.device("dev-1"), registry.device("dev-2")
    for device in (only_2, both):
        registry.pin("1.1.0", device=device)
    running_1_0_0(registry, only_2, [2])
    (record,) = build(registry)
    assert (record.format_version, record.status) == (2, "ready")
    assert record.codec != "tensor"
    assert delta_of(running_1_0_0(registry, only_2, [2])) is None
    assert delta_of(running_1_0_0(registry, both, [1, 2]))["sha256"] == record.sha256


# delta_formats an agent sends -> the field the 422 names, and what its message says
BAD_FORMATS = {
    "zero": ([0], "installed.0.delta_formats.0", "greater than or equal to 1"),
    "negative": ([1, -2], "installed.0.delta_formats.1", "greater than or equal to 1"),
    "past the header's byte": ([256], "installed.0.delta_formats.0", "less than or equal to 255"),
    "a string": (["2"], "installed.0.delta_formats.0", "valid integer"),
    "a float": ([1.0], "installed.0.delta_formats.0", "valid integer"),
    "a boolean": ([True], "installed.0.delta_formats.0", "valid integer"),
    "repeated": ([1, 2, 1], "installed.0.delta_formats", "each version at most once"),
    "too many": (list(range(1, 18)), "installed.0.delta_formats", "at most 16 delta format versions, got 17"),
    "a number for a list": (2, "installed.0.delta_formats", "valid array"),
    "null": (None, "installed.0.delta_formats", "valid array"),
}


def test_reported_formats_are_validated_with_a_422_naming_the_field(fleet):
    device = fleet.device("dev-1")
    refused = {}
    for case, (value, _, says) in BAD_FORMATS.items():
        entry = {**fleet.installed("1.0.0", 1), "delta_formats": value}
        answer = fleet.checkin(device, installed_models=[entry])
        body = answer.json()
        refused[case] = (answer.status_code, body["error"], body["field"], says in body["message"])
    assert refused == {case: (422, "invalid", field, True) for case, (_, field, _) in BAD_FORMATS.items()}
