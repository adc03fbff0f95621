"""Concurrent writers: `modelfleet server run --workers 2` in a subprocess, real HTTP on loopback.

Two worker processes share one database while several device threads post
telemetry, events and changed check-ins at once, and the last-seen flusher
writes too. On SQLite one write lock covers the whole file: every request must
still be answered without a 5xx, and every summary and event stored exactly
once. A lock that stays taken past the busy timeout is a 503 with Retry-After,
never a 500.
"""

import base64
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import func, make_url, select

from modelfleet.bundle import BuildOptions, SigningKey, build_bundle
from modelfleet.protocol import EnrollRequest, enrollment_message
from modelfleet.server import create_app, init_server, load_server_config, save_server_config
from modelfleet.store import EventRow, SummaryRow, make_engine

DEVICES = 6  # one thread each
ROUNDS = 12  # per device: a telemetry batch, an event batch, a changed check-in; every third round a resend
BATCH = 25
LATENCY_BINS = 58
EVENTS = 10
WINDOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
INVENTORY = {"arch": "aarch64", "ram_bytes": 2**31, "disk_free_bytes": 2**33}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_workers(tmp_path, empty_database_url):
    """A server with 2 uvicorn workers and a last-seen flush every 50 ms; yields (url, admin, config)."""
    data = tmp_path / "data"
    initialised = init_server(data, database_url=empty_database_url)
    save_server_config(initialised.config.model_copy(update={"last_seen_flush_seconds": 0.05}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    command = [sys.executable, "-m", "modelfleet", "server", "run", "--data", str(data), "--port", str(port)]
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [*command, "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        pytest.fail(f"the server did not start: {(tmp_path / 'server.log').read_text()}")
    yield url, {"Authorization": f"Bearer {initialised.admin_token}"}, load_server_config(data)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def enroll(http, device_id, token):
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    unsigned = EnrollRequest(
        device_id=device_id,
        public_key=public,
        issued_at=datetime.now(UTC),
        enroll_token=token,
        inventory=INVENTORY,
        proof="-",
    )
    proof = base64.b64encode(key.sign(enrollment_message(unsigned))).decode()
    answer = http.post("/v1/devices/enroll", content=unsigned.model_copy(update={"proof": proof}).model_dump_json())
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['credential']}"}


def summary(summary_id, n):
    return {
        "id": summary_id,
        "model": "digits",
        "version": "1.0.0",
        "window_start": WINDOW.isoformat(),
        "window_seconds": 300,
        "n": n,
        "errors": 0,
        "latency_counts": [0] * 20 + [n] + [0] * (LATENCY_BINS - 21),
        "latency_sum_ms": 2.5 * n,
        "confidence_counts": [0, n],
        "confidence_sum": 0.75 * n,
        "confidence_sum_sq": 0.5625 * n,
        "predicted_counts": [n] + [0] * 9,
        "feature_counts": [[n, 0], [0, n]],
    }


def event(event_id):
    return {"id": event_id, "kind": "health_passed", "at": WINDOW.isoformat(), "model": "digits", "version": "1.0.0"}


def play_device(url, device, headers, statuses, accepted):
    """One device's traffic: every answer's status counted, every 'accepted' summed per stream."""
    with httpx.Client(base_url=url, headers=headers, timeout=60, trust_env=False) as http:
        for round_ in range(ROUNDS):
            summaries = [summary(f"{device}-r{round_:02d}-s{i:02d}", n=round_ + 1) for i in range(BATCH)]
            events = [event(f"{device}-r{round_:02d}-e{i:02d}") for i in range(EVENTS)]
            report = {"inventory": {**INVENTORY, "disk_free_bytes": 2**33 - round_}, "installed": []}
            posts = [("telemetry", "/v1/telemetry", {"summaries": summaries})]
            posts += [("events", "/v1/events", {"events": events}), ("checkin", "/v1/devices/checkin", report)]
            if round_ % 3 == 2:  # a device that lost the answer sends the same batch again
                posts.append(("telemetry", "/v1/telemetry", {"summaries": summaries}))
            for stream, path, body in posts:
                answer = http.post(path, json=body)
                statuses[answer.status_code] += 1
                if answer.status_code == 200 and stream != "checkin":
                    accepted[stream] += answer.json()["accepted"]


def test_two_workers_store_every_concurrent_write_once_and_never_answer_5xx(two_workers):
    url, admin, config = two_workers
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        token = http.post("/v1/admin/enrollment-tokens", json={"max_uses": DEVICES}, headers=admin).json()["token"]
        devices = {f"busy-{n:02d}": enroll(http, f"busy-{n:02d}", token) for n in range(DEVICES)}
    statuses: Counter[int] = Counter()
    accepted: Counter[str] = Counter()
    threads = [
        threading.Thread(target=play_device, args=(url, device, headers, statuses, accepted))
        for device, headers in devices.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not [status for status in statuses if status >= 500], statuses
    assert set(statuses) == {200}, statuses
    assert statuses[200] == DEVICES * (ROUNDS * 3 + ROUNDS // 3)
    assert accepted == {"telemetry": DEVICES * ROUNDS * BATCH, "events": DEVICES * ROUNDS * EVENTS}
    engine = make_engine(config.database_url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(select(SummaryRow.id, SummaryRow.n)).all()
            events = connection.execute(select(func.count()).select_from(EventRow)).scalar_one()
    finally:
        engine.dispose()
    expected = {f"{d}-r{r:02d}-s{i:02d}": r + 1 for d in devices for r in range(ROUNDS) for i in range(BATCH)}
    assert dict(stored) == expected
    assert len(stored) == len(expected)
    assert events == DEVICES * ROUNDS * EVENTS


@pytest.fixture
def held_sqlite_lock(server_config, database_url, clock):
    """An app whose SQLite writers wait at most 50 ms, and a connection of another process's kind holding the lock."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's one file-wide write lock; PostgreSQL locks rows and has no such wait")
    engine = make_engine(database_url, busy_timeout_ms=50)
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None)
    with TestClient(create_app(server_config, clock=clock, engine=engine)) as client:
        yield client, holder
    holder.close()
    engine.dispose()


def test_a_write_lock_held_past_the_busy_timeout_is_a_503_with_retry_after_then_the_resend_is_stored(
    held_sqlite_lock, fleet, summary
):
    client, holder = held_sqlite_lock
    fleet.client = client
    device = fleet.device("locked-out-1")
    batch = {"summaries": [summary(id="summary-locked-1")]}
    holder.execute("BEGIN IMMEDIATE")
    busy = client.post("/v1/telemetry", json=batch, headers=device.headers)
    holder.execute("ROLLBACK")
    assert busy.status_code == 503, busy.text
    assert busy.headers["Retry-After"] == "1"
    assert busy.json()["error"] == "database_busy"
    again = client.post("/v1/telemetry", json=batch, headers=device.headers)
    assert again.json() == {"accepted": 1, "duplicates": 0}


def test_a_lost_postgresql_connection_is_a_503_until_the_pool_reconnects_never_a_500(fleet, engine, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("a server connection that dies under the pool exists only on PostgreSQL")
    device = fleet.device("lost-1")
    assert fleet.checkin(device).status_code == 200
    killer = make_engine(database_url)
    with killer.connect() as connection:
        ended = connection.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).scalar_one()
    killer.dispose()
    assert ended >= 1
    answers = []
    for _ in range(40):  # at most one failed request per pooled connection
        answers.append(fleet.checkin(device))
        if answers[-1].status_code == 200:
            break
    assert answers[-1].status_code == 200
    # Each pooled connection that died fails the one request that meets it, as "retry later".
    lost = {(a.status_code, a.json()["error"], a.headers["Retry-After"]) for a in answers[:-1]}
    assert lost <= {(503, "database_unavailable", "1")}


def test_a_pin_change_is_seen_by_the_next_check_in_whichever_worker_serves_it(two_workers, bundles, tmp_path):
    url, admin, config = two_workers
    key = SigningKey.from_file(config.data_dir / "keys" / "bundle-signing.key")
    uploads = []
    for release, version in enumerate(("1.0.0", "1.1.0"), start=1):
        path = tmp_path / f"digits-{version}.mfb"
        options = BuildOptions(name="digits", version=version, release=release, labels=bundles.labels)
        build_bundle(bundles.model, bundles.validation, [key], path, options)
        uploads.append(path.read_bytes())
    # No keep-alive: every request is a new connection, which either worker may accept.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=30, trust_env=False, limits=fresh) as http:
        for data in uploads:
            stored = http.post("/v1/admin/bundles", content=data, headers=admin)
            assert stored.status_code == 201, stored.text
        token = http.post("/v1/admin/enrollment-tokens", json={"tags": {"ring": "a"}}, headers=admin).json()["token"]
        device = enroll(http, "pinned-1", token)
        report = {"inventory": INVENTORY, "installed": []}
        seen = []
        for version in ("1.0.0", "1.1.0") * 5:
            pin = {"model": "digits", "version": version, "selector": {"ring": "a"}}
            assert http.post("/v1/admin/pins", json=pin, headers=admin).status_code == 201
            (desired,) = http.post("/v1/devices/checkin", json=report, headers=device).json()["desired"]
            seen.append(desired["version"])
    assert seen == ["1.0.0", "1.1.0"] * 5
