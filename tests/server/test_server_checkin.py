"""Check-in: desired state from pins, ETag and 304, writes only on change, last-seen in batches."""

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from modelfleet.protocol import Artifact, CheckinResponse, DesiredModel
from modelfleet.server import create_app
from modelfleet.server._checkin import AnswerCache
from modelfleet.store import Device as DeviceRow

# (device tags, pins as (version, "device" | selector), installed (version, release), expected version)
RESOLUTION = {
    "device pin beats every selector": (
        {"site": "a", "ring": "1"},
        [("1.0.0", "device"), ("1.1.0", {"site": "a", "ring": "1"})],
        [],
        "1.0.0",
    ),
    "more selector tags beat fewer": (
        {"site": "a", "ring": "1"},
        [("1.1.0", {"site": "a"}), ("1.0.0", {"site": "a", "ring": "1"})],
        [],
        "1.0.0",
    ),
    "a selector must match every tag": (
        {"site": "a"},
        [("1.0.0", {"site": "a", "ring": "1"}), ("1.1.0", {"site": "a"})],
        [],
        "1.1.0",
    ),
    "the newest of equally specific selectors": (
        {"site": "a", "ring": "1"},
        [("1.0.0", {"site": "a"}), ("1.1.0", {"ring": "1"})],
        [],
        "1.1.0",
    ),
    "an empty selector is the fleet default": ({}, [("1.0.0", {})], [], "1.0.0"),
    "a pin beats the newest release of an installed model": (
        {"site": "a"},
        [("1.1.0", {"site": "a"})],
        [("1.0.0", 1)],
        "1.1.0",
    ),
    "no pin: the newest release of an installed model": ({}, [], [("1.0.0", 1)], "1.2.0"),
    "no pin, nothing installed: nothing": ({"site": "a"}, [("1.0.0", {"site": "b"})], [], None),
}


@pytest.fixture
def registry(fleet):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        assert fleet.upload(version).status_code == 201
    return fleet


@pytest.mark.parametrize("case", RESOLUTION, ids=list(RESOLUTION))
def test_desired_state_resolves_pins(registry, case):
    tags, pins, reported, expected = RESOLUTION[case]
    device = registry.device("dev-1", tags=tags)
    for version, target in pins:
        registry.pin(version, device=device) if target == "device" else registry.pin(version, selector=target)
    installed = [registry.installed(version, release) for version, release in reported]
    desired = registry.checkin(device, installed_models=installed).json()["desired"]
    assert [d["version"] for d in desired] == ([expected] if expected else [])


def test_the_answer_names_the_artifact_to_download(registry):
    device = registry.device("dev-1")
    registry.pin("1.1.0", device=device)
    (desired,) = registry.checkin(device).json()["desired"]
    bundle = registry.client.get("/v1/admin/bundles/digits/1.1.0", headers=registry.admin()).json()
    assert desired["artifact"] == {
        "url": f"http://testserver/v1/artifacts/{bundle['sha256']}",
        "sha256": bundle["sha256"],
        "size": bundle["size"],
    }
    assert (desired["model"], desired["release"], desired["mode"], desired["rollback"]) == (
        "digits",
        2,
        "active",
        False,
    )


def test_a_lower_release_than_installed_is_marked_as_a_rollback(registry):
    device = registry.device("dev-1")
    registry.pin("1.0.0", device=device)
    (desired,) = registry.checkin(device, installed_models=[registry.installed("1.2.0", 3)]).json()["desired"]
    assert (desired["version"], desired["rollback"]) == ("1.0.0", True)


def test_a_yanked_version_falls_back_to_the_next_candidate(registry):
    device = registry.device("dev-1", tags={"site": "a"})
    registry.pin("1.1.0", selector={"site": "a"})
    registry.pin("1.2.0", device=device)
    registry.client.post("/v1/admin/bundles/digits/1.2.0/yank", json={"reason": "drift"}, headers=registry.admin())
    assert [d["version"] for d in registry.checkin(device).json()["desired"]] == ["1.1.0"]


def test_an_unchanged_desired_state_is_a_304(registry):
    device = registry.device("dev-1")
    registry.pin("1.0.0", device=device)
    first = registry.checkin(device)
    etag = first.headers["ETag"]
    again = registry.checkin(device, etag=etag)
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    for header in ("*", f"W/{etag}", f'"other", {etag}'):
        assert registry.checkin(device, etag=header).status_code == 304
    assert registry.checkin(device, etag='"stale"').status_code == 200


def test_a_new_pin_changes_the_etag(registry):
    device = registry.device("dev-1")
    registry.pin("1.0.0", device=device)
    etag = registry.checkin(device).headers["ETag"]
    registry.pin("1.1.0", device=device)
    changed = registry.checkin(device, etag=etag)
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert changed.json()["desired"][0]["version"] == "1.1.0"


def test_an_unchanged_check_in_reads_twice_and_writes_nothing(registry, statements):
    device = registry.device("dev-1")
    registry.pin("1.0.0", device=device)
    installed = [registry.installed("1.0.0", 1)]
    etag = registry.checkin(device, installed_models=installed).headers["ETag"]
    statements.clear()
    for _ in range(5):
        assert registry.checkin(device, installed_models=installed, etag=etag).status_code == 304
    assert statements.writes == []
    assert len(statements.reads) == 2 * 5


def test_a_changed_report_is_written_once(registry, statements, engine):
    device = registry.device("dev-1")
    statements.clear()
    registry.checkin(device)
    registry.checkin(device)
    assert len(statements.writes) == 1
    statements.clear()
    registry.checkin(device, installed_models=[registry.installed("1.0.0", 1, "trial")])
    registry.checkin(device, installed_models=[registry.installed("1.0.0", 1, "trial")])
    assert len(statements.writes) == 1
    with engine.connect() as connection:
        row = connection.execute(select(DeviceRow.inventory, DeviceRow.installed)).one()
    assert row.inventory["arch"] == "aarch64"
    assert row.installed == [
        {"model": "digits", "version": "1.0.0", "release": 1, "state": "trial", "previous_version": None}
    ]


def last_seen(engine):
    with engine.connect() as connection:
        return dict(connection.execute(select(DeviceRow.id, DeviceRow.last_seen_at)).all())


def test_last_seen_is_buffered_and_flushed_in_one_batch(registry, app, statements, engine, clock):
    devices = [registry.device(f"dev-{i}") for i in range(3)]
    statements.clear()
    expected = {}
    for device in devices * 2:
        clock.advance(5)
        registry.checkin(device)
        expected[device.id] = clock.now()
    assert not any("last_seen_at" in s for s in statements.writes)
    assert set(last_seen(engine).values()) == {None}
    statements.clear()
    assert app.state.server.last_seen.flush(engine) == 3
    assert len(statements.writes) == 1  # one executemany
    assert last_seen(engine) == expected
    assert app.state.server.last_seen.flush(engine) == 0


def test_last_seen_never_moves_backwards(registry, app, engine, clock):
    device = registry.device("dev-1")
    registry.checkin(device)
    newer = clock.now()
    app.state.server.last_seen.flush(engine)
    app.state.server.last_seen.note(device.id, newer.replace(year=2020))
    app.state.server.last_seen.flush(engine)
    assert last_seen(engine)[device.id] == newer


def test_the_flusher_writes_periodically_and_at_shutdown(server_config, clock, engine, fleet):
    config = server_config.model_copy(update={"last_seen_flush_seconds": 0.05})
    app = create_app(config, clock=clock, engine=engine)
    with TestClient(app) as client:
        fleet.client = client
        early, late = fleet.device("dev-early"), fleet.device("dev-late")
        fleet.checkin(early)
        deadline = time.monotonic() + 5
        while last_seen(engine)[early.id] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last_seen(engine)[early.id] == clock.now()
        app.state.server.last_seen.note(late.id, clock.now())
    assert last_seen(engine)[late.id] == clock.now()


# device id, desired versions -> the cached answer is byte for byte the schema's own JSON
ANSWERS = [
    ("dev-1", ("1.0.0",)),
    ("dev-1", ()),
    ('dév-ü"quoted\\', ("1.0.0", "1.1.0")),
]


@pytest.mark.parametrize(("device_id", "versions"), ANSWERS)
def test_a_cached_answer_is_the_bytes_the_response_schema_makes(device_id, versions):
    desired = tuple(
        DesiredModel(
            model=f"model-{n}",
            version=version,
            release=n + 1,
            rollout_id="r-1" if n else None,
            artifact=Artifact(url=f"http://x/v1/artifacts/{'a' * 64}", sha256="a" * 64, size=n),
        )
        for n, version in enumerate(versions)
    )
    cache = AnswerCache(entries=1)
    for _ in range(2):  # a miss, then a hit
        content = cache.content(device_id, desired, 300)
        assert (
            content
            == CheckinResponse(device_id=device_id, desired=desired, poll_seconds=300).model_dump_json().encode()
        )
