"""The agent against a real server (uvicorn on loopback, SQLite, one flow on PostgreSQL).

A server is initialised per test with ``init_server``; the bundles are built once per
module with the signing key of a module-level ``init_server`` that every test server
trusts. The agent enrolls with a real enrollment token, checks in, downloads,
installs and commits, forwards events and summaries exactly once across a server
outage, and stops when its device is revoked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from modelfleet.agent import (
    Agent,
    AgentConfig,
    DownloadPolicy,
    HealthPolicy,
    Predictor,
    Response,
    RuntimeConfig,
    SlotStore,
    agent_status,
    backoff_delay,
)
from modelfleet.bundle import BuildOptions, DeviceProfile, PublicKey, SigningKey, ValidationSet, build_bundle
from modelfleet.bundle.delta import read_delta_header
from modelfleet.config import ProxyServer, ProxySettings
from modelfleet.protocol import CheckinRequest
from modelfleet.server import ServerConfig, create_app, init_server, load_server_config
from modelfleet.server._deltas import DeltaSettings
from modelfleet.sim import ModelCase
from modelfleet.sim.models import fine_tuned, trap_classifier
from modelfleet.telemetry import Summary

MODEL = "digits"
DEVICE = "pi-agent-01"
LATENCY_BINS = 58


@dataclass(frozen=True)
class SignedBundles:
    """Bundles signed by the key a module-level ``init_server`` made, and that key's public file."""

    trusted_key: Path
    versions: dict[str, Path]
    signing_key: Path


@pytest.fixture(scope="module")
def signed(digits_case: ModelCase, tmp_path_factory: pytest.TempPathFactory) -> SignedBundles:
    directory = tmp_path_factory.mktemp("signed")
    made = init_server(directory / "keys-server")
    key = SigningKey.from_file(made.signing_key)
    validation = ValidationSet(inputs={"X": digits_case.x_val}, labels=digits_case.y_val)
    versions = {}
    for release, version in enumerate(("1.0.0", "1.1.0"), start=1):
        out = directory / f"digits-{version}.mfb"
        options = BuildOptions(name=MODEL, version=version, release=release, golden_count=4)
        build_bundle(digits_case.path, validation, [key], out, options)
        versions[version] = out
    return SignedBundles(made.trusted_key, versions, made.signing_key)


class LiveServer:
    """``init_server`` + ``create_app`` under uvicorn on a fixed loopback port that survives a restart."""

    def __init__(self, data_dir: Path, trusted_key: Path, database_url: str | None = None) -> None:
        self.init = init_server(data_dir, database_url)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config: ServerConfig = load_server_config(data_dir).model_copy(
            update={"public_url": self.url, "trusted_keys": (trusted_key,), "poll_seconds": 60}
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.admin = httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.init.admin_token}"}
        )

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        server = uvicorn.Server(uvicorn.Config(create_app(self.config), log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self) -> None:
        assert self._server is not None
        assert self._thread is not None
        assert self._sock is not None
        self._server.should_exit = True
        self._thread.join(20)
        self._sock.close()
        self.admin.close()
        self.admin = httpx.Client(base_url=self.url, timeout=30, headers=dict(self.admin.headers))
        self._server = None

    def close(self) -> None:
        if self._server is not None:
            self.stop()
        self.admin.close()

    # admin helpers
    def push(self, bundle: Path) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        reply = self.admin.post("/v1/admin/bundles", content=bundle.read_bytes(), headers=headers)
        assert reply.status_code == 201, reply.text

    def enrollment_token(self, **body: Any) -> str:
        reply = self.admin.post("/v1/admin/enrollment-tokens", json={"max_uses": 1, "tags": {"site": "lab"}, **body})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["token"])

    def pin(self, version: str) -> int:
        """Pin ``version`` for devices tagged ``site=lab`` (what the enrollment tokens apply); the pin's id."""
        body = {"model": MODEL, "version": version, "selector": {"site": "lab"}}
        reply = self.admin.post("/v1/admin/pins", json=body)
        assert reply.status_code == 201, reply.text
        return int(reply.json()["id"])

    def events(self, device_id: str = DEVICE) -> list[dict[str, Any]]:
        reply = self.admin.get("/v1/admin/events", params={"device_id": device_id, "limit": 1000})
        assert reply.status_code == 200, reply.text
        return list(reply.json())

    def summaries(self, version: str = "1.0.0") -> int:
        reply = self.admin.get("/v1/admin/telemetry/windows", params={"model": MODEL, "version": version})
        assert reply.status_code == 200, reply.text
        return sum(int(window["summaries"]) for window in reply.json())


def make_server(tmp_path: Path, signed: SignedBundles, database_url: str | None = None) -> LiveServer:
    live = LiveServer(tmp_path / "server", signed.trusted_key, database_url)
    live.start()
    for path in signed.versions.values():
        live.push(path)
    return live


@pytest.fixture
def live(tmp_path: Path, signed: SignedBundles) -> Iterator[LiveServer]:
    server = make_server(tmp_path, signed)
    yield server
    server.close()


def make_agent(
    data_dir: Path,
    live: LiveServer,
    device: DeviceProfile,
    token: str | None,
    *,
    health: HealthPolicy | None = None,
    device_id: str = DEVICE,
) -> Agent:
    config = AgentConfig(
        server=live.url,
        device_id=device_id,
        trusted_keys=(PublicKey.from_file(live.config.trusted_keys[0]).to_pem().decode(),),
        enroll_token=token,
    )
    config.save(data_dir)
    download = DownloadPolicy(deadline_s=20.0, read_timeout_s=5.0, max_retries=1, backoff_base_s=0.01)
    return Agent(
        data_dir,
        config,
        profile=device,
        download=download,
        health=health or HealthPolicy(latency_runs=3),
        rng=random.Random(7),  # noqa: S311 - jitter
        backoff_base_s=0.5,
        backoff_cap_s=30.0,
    )


def summary(index: int, version: str = "1.0.0") -> Summary:
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC) + timedelta(minutes=5 * index)
    document = {
        "id": f"summary-{index:04d}",
        "model": MODEL,
        "version": version,
        "window_start": start.isoformat(),
        "window_seconds": 300,
        "n": 3,
        "errors": 0,
        "latency_counts": [0] * 20 + [3] + [0] * (LATENCY_BINS - 21),
        "latency_sum_ms": 7.5,
        "confidence_counts": [0, 3],
        "confidence_sum": 2.25,
        "confidence_sum_sq": 1.6875,
        "predicted_counts": [3] + [0] * 9,
        "feature_counts": [[3, 0], [0, 3]],
    }
    return Summary.model_validate(document)


def install_flow(live: LiveServer, agent: Agent) -> None:
    """Enroll, check in, install 1.1.0 to commit; the next check-in is a 304 with nothing to do."""
    live.pin("1.1.0")
    first = agent.step()
    assert first.ok, first.error
    assert first.status == "accepted"
    assert agent.installer.journal(MODEL).state.value == "committed"
    assert agent.installed()[0].version == "1.1.0"
    etag = agent.state.etag
    assert etag is not None
    # The second step reports the new installed state (stored), the third is the cheap path.
    assert agent.step().ok
    assert agent.step().ok
    assert agent.client.last_etag == etag
    kinds = sorted(event["kind"] for event in live.events())
    assert kinds == ["committed", "health_passed", "installed"]
    assert agent.outbox.counts().pending == 0


def test_enroll_install_commit_and_304(tmp_path: Path, live: LiveServer, device: DeviceProfile) -> None:
    agent = make_agent(tmp_path / "agent", live, device, live.enrollment_token())
    with agent:
        install_flow(live, agent)
        etag = agent.state.etag
        seen: list[int] = []
        original = agent.client._http.request

        def request(*args: Any, **kwargs: Any) -> Response:
            reply = original(*args, **kwargs)
            seen.append(reply.status_code)
            return reply

        agent.client._http.request = request  # type: ignore[method-assign]
        assert agent.step().ok
        assert seen == [304]
        assert agent.state.etag == etag
    device_row = live.admin.get(f"/v1/admin/devices/{DEVICE}").json()
    assert device_row["status"] == "accepted"
    assert (tmp_path / "agent" / "identity" / "device.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "agent" / "identity" / "credential").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_install_flow_on_postgresql(
    tmp_path: Path, signed: SignedBundles, device: DeviceProfile, database_url: str
) -> None:
    server = make_server(tmp_path, signed, database_url)
    try:
        with make_agent(tmp_path / "agent", server, device, server.enrollment_token()) as agent:
            install_flow(server, agent)
    finally:
        server.close()


def test_pending_until_approved(tmp_path: Path, live: LiveServer, device: DeviceProfile) -> None:
    with make_agent(tmp_path / "agent", live, device, None) as agent:
        result = agent.step()
        assert result.ok
        assert result.status == "pending"
        assert result.delay_s == 60
        reply = live.admin.post(f"/v1/admin/devices/{DEVICE}/approve")
        assert reply.status_code == 200, reply.text
        assert agent.step().status == "accepted"
        assert agent.client.credential is not None


def test_outage_backoff_then_exactly_once(tmp_path: Path, live: LiveServer, device: DeviceProfile) -> None:
    with make_agent(tmp_path / "agent", live, device, live.enrollment_token()) as agent:
        assert agent.step().ok
        for index in range(3):
            agent.outbox.add_summary(summary(index))
        assert agent.step().sent_summaries == 3
        live.stop()
        delays = []
        for index in range(3, 8):
            agent.outbox.add_summary(summary(index))
            result = agent.step()
            assert not result.ok
            assert result.error is not None
            delays.append(result.delay_s)
        # full jitter: each delay within [0, base * 2**attempt]
        assert all(0 <= delay <= 0.5 * 2**attempt for attempt, delay in enumerate(delays))
        assert agent.outbox.counts().pending == 5
        live.start()
        result = agent.step()
        assert result.ok, result.error
        assert result.sent_summaries == 5
        assert result.delay_s == 60
        # A lost acknowledgement: the same items sent again are duplicates, never new rows.
        for index in range(8):
            agent.outbox.add_summary(summary(index))  # known ids: not queued again
        assert agent.outbox.counts().pending == 0
        assert agent.step().sent_summaries == 0
    assert live.summaries() == 8


def test_resend_after_lost_ack_is_counted_once(tmp_path: Path, live: LiveServer, device: DeviceProfile) -> None:
    with make_agent(tmp_path / "agent", live, device, live.enrollment_token()) as agent:
        assert agent.step().ok
        for index in range(4):
            agent.outbox.add_summary(summary(index))
        original = agent.outbox.mark_sent
        calls = {"n": 0}

        def lose_first(ids: Any) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("disk hiccup after the server acknowledged")
            return original(ids)

        agent.outbox.mark_sent = lose_first  # type: ignore[method-assign]
        assert not agent.step().ok
        assert agent.outbox.counts().pending == 4
        assert agent.step().ok
        assert agent.outbox.counts().pending == 0
    assert live.summaries() == 4


def test_revoked_device_stops(tmp_path: Path, live: LiveServer, device: DeviceProfile) -> None:
    with make_agent(tmp_path / "agent", live, device, live.enrollment_token()) as agent:
        assert agent.step().ok
        reply = live.admin.post(f"/v1/admin/devices/{DEVICE}/revoke")
        assert reply.status_code == 200, reply.text
        agent.outbox.add_summary(summary(1))
        result = agent.step()
        assert result.stopped
        assert result.status == "revoked"
        assert agent.client.credential is None
        assert agent.step().stopped
        assert agent.outbox.counts().pending == 1  # nothing more was sent
        stop = threading.Event()
        last = agent.run_forever(stop)
        assert last is not None
        assert last.stopped
    status = agent_status(tmp_path / "agent")
    assert status["status"] == "revoked"
    assert status["enrolled"] is False
    assert live.summaries() == 0


def test_status_cli_shows_installed_version(tmp_path: Path, live: LiveServer, device: DeviceProfile) -> None:
    data_dir = tmp_path / "agent"
    with make_agent(data_dir, live, device, live.enrollment_token()) as agent:
        live.pin("1.0.0")
        assert agent.step().ok
    env = {**os.environ, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "modelfleet", "agent", "status", "--data-dir", str(data_dir), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["device_id"] == DEVICE
    assert report["enrolled"] is True
    assert report["status"] == "accepted"
    assert report["server"] == live.url
    assert report["models"][MODEL]["current"] == "1.0.0"
    assert report["models"][MODEL]["state"] == "committed"
    assert report["outbox"]["pending_events"] == 0


def test_run_once_cli_enrolls(tmp_path: Path, live: LiveServer) -> None:
    data_dir = tmp_path / "cli-agent"
    token = live.enrollment_token()
    trusted = str(live.config.trusted_keys[0])
    command = [sys.executable, "-m", "modelfleet", "agent", "run", "--data-dir", str(data_dir)]
    first = [*command, "--server", live.url, "--enroll-token", token, "--trust", trusted, "--tag", "site=lab", "--once"]
    done = subprocess.run(first, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    saved = AgentConfig.load(data_dir)
    assert saved is not None
    assert saved.tags == {"site": "lab"}
    assert (data_dir / "agent.json").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    other = SigningKey.generate().save(tmp_path / "other", "k")[1]
    refused = subprocess.run(
        [*command, "--trust", str(other), "--once"], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 1
    assert "trust_changed" in refused.stderr
    devices = live.admin.get("/v1/admin/devices").json()
    assert [d["status"] for d in devices] == ["accepted"]


def test_an_agent_behind_a_proxy_enrolls_and_checks_in_through_it(
    tmp_path: Path, live: LiveServer, forwarding_proxy
) -> None:
    # The whole path: the environment read by modelfleet.config, `agent run --proxy` saved in agent.json,
    # the lean entry point, the agent's transport, a real proxy and a real server.
    data_dir = tmp_path / "proxied-agent"
    trusted = str(live.config.trusted_keys[0])
    clean = {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}
    command = [sys.executable, "-m", "modelfleet", "agent", "run", "--data-dir", str(data_dir), "--once"]

    def run(*options: str, **env: str) -> None:
        done = subprocess.run(
            [*command, *options], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr + done.stdout

    first = ("--server", live.url, "--enroll-token", live.enrollment_token(), "--trust", trusted)
    run(*first, http_proxy=forwarding_proxy.url)
    enrolled = [("POST", f"{live.url}/v1/devices/enroll"), ("POST", f"{live.url}/v1/devices/checkin")]
    assert forwarding_proxy.requests() == enrolled
    run("--proxy", forwarding_proxy.url)  # saved: later runs use it without the variable
    run()
    assert forwarding_proxy.requests() == [*enrolled, *[("POST", f"{live.url}/v1/devices/checkin")] * 2]
    run(NO_PROXY="127.0.0.1")  # NO_PROXY applies to the saved proxy too
    assert len(forwarding_proxy.requests()) == 4
    assert agent_status(data_dir)["status"] == "accepted"


def test_an_agent_whose_proxy_wants_other_credentials_keeps_checking_in_on_its_backoff(
    tmp_path: Path, forwarding_proxy, device: DeviceProfile
) -> None:
    # Unlike the downloader, the loop does not give up on a 407: the fix comes from outside (the proxy's
    # accounts, or `agent run --proxy`) and a try costs one small request, on the same backoff as an outage.
    forwarding_proxy.credentials = "dev:right"
    proxy = ProxyServer.from_url(forwarding_proxy.url_with("dev", "hunter2"))
    pem = SigningKey.generate().public.to_pem().decode()
    config = AgentConfig(server="http://fleet.test:8080", device_id=DEVICE, trusted_keys=(pem,))
    settings = ProxySettings(http=proxy, https=proxy)
    rng = random.Random(11)  # noqa: S311 - jitter
    with Agent(tmp_path / "agent", config, profile=device, proxy=settings, rng=rng, backoff_base_s=2.0) as agent:
        first, second = agent.step(), agent.step()
    assert [(r.ok, r.stopped) for r in (first, second)] == [(False, False), (False, False)]
    assert first.error is not None
    assert f"proxy {forwarding_proxy.url} refused the request to fleet.test:8080: 407" in first.error
    assert "hunter2" not in first.error
    expected = random.Random(11)  # noqa: S311 - the same jitter
    assert [first.delay_s, second.delay_s] == [backoff_delay(n, expected, 2.0, 300.0) for n in range(2)]
    assert len(forwarding_proxy.seen) == 2, "one enrollment request per step"


def test_run_cli_loops_until_sigterm(tmp_path: Path, live: LiveServer) -> None:
    data_dir = tmp_path / "loop-agent"
    command = [
        sys.executable,
        "-m",
        "modelfleet",
        "agent",
        "run",
        "--data-dir",
        str(data_dir),
        "--server",
        live.url,
        "--enroll-token",
        live.enrollment_token(),
        "--trust",
        str(live.config.trusted_keys[0]),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (data_dir / "identity" / "credential").exists():
            time.sleep(0.1)
        assert (data_dir / "identity" / "credential").exists()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, stderr
    assert agent_status(data_dir)["status"] == "accepted"


def _last_checkin(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / "state.json").read_text()).get("last_checkin")
    except (OSError, ValueError):
        return None


def test_admin_wake_makes_a_polling_agent_check_in_at_once(
    tmp_path: Path, signed: SignedBundles, broker_url: str
) -> None:
    """The real server publishes through Mosquitto and the real ``agent run --mqtt`` checks in well
    before its 60 s poll interval would have it (the bounded wait is far shorter than the poll)."""
    live = LiveServer(tmp_path / "server", signed.trusted_key)
    live.config = live.config.model_copy(update={"mqtt_url": broker_url})
    live.start()
    data_dir = tmp_path / "woken-agent"
    command = [
        *(sys.executable, "-m", "modelfleet", "agent", "run", "--data-dir", str(data_dir)),
        *("--server", live.url, "--enroll-token", live.enrollment_token(), "--identity", DEVICE),
        *("--trust", str(live.config.trusted_keys[0]), "--mqtt", broker_url),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    admin = [sys.executable, "-m", "modelfleet", "devices", "wake", "--server", live.url]
    admin += ["--token", live.init.admin_token]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _last_checkin(data_dir) is None:
            time.sleep(0.1)
        first = _last_checkin(data_dir)
        assert first is not None
        assert agent_status(data_dir)["status"] == "accepted"
        woken = None
        # The agent subscribes in the background: wake until a check-in follows, at most 25 s (< 60 s poll).
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and woken is None:
            reply = subprocess.run([*admin, DEVICE], capture_output=True, text=True, timeout=60, check=False)
            assert reply.returncode == 0, reply.stderr
            assert "woke" in reply.stdout, reply.stdout
            until = time.monotonic() + 3
            while time.monotonic() < until and _last_checkin(data_dir) == first:
                time.sleep(0.05)
            woken = _last_checkin(data_dir) if _last_checkin(data_dir) != first else None
        assert woken is not None
        assert woken > first
        audit = [entry["action"] for entry in live.admin.get("/v1/admin/audit").json()]
        assert "device.wake" in audit
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        live.close()


def test_a_version_that_fails_its_first_live_inferences_is_rolled_back_and_reported(
    tmp_path: Path, live: LiveServer, signed: SignedBundles, digits_case: ModelCase, device: DeviceProfile
) -> None:
    """2.0.0 passes its golden vectors but raises on a live input: the agent rolls back and tells the server."""
    key = SigningKey.from_file(signed.signing_key)
    trap = trap_classifier(tmp_path / "trap.onnx", batch=None).path
    bundle = tmp_path / "digits-2.0.0.mfb"
    options = BuildOptions(name=MODEL, version="2.0.0", release=3, golden_count=4, fallback_class=7)
    build_bundle(trap, ValidationSet(inputs={"X": digits_case.x_val}, labels=digits_case.y_val), [key], bundle, options)
    live.push(bundle)
    data_dir = tmp_path / "agent"
    with make_agent(data_dir, live, device, live.enrollment_token()) as agent:  # no live watch: 1.0.0 commits
        pin = live.pin("1.0.0")
        assert agent.step().ok
        assert agent.installed()[0].version == "1.0.0"
    assert live.admin.delete(f"/v1/admin/pins/{pin}").status_code == 204
    live.pin("2.0.0")
    watching = HealthPolicy(latency_runs=3, live_inferences=3, max_live_errors=0)
    with make_agent(data_dir, live, device, None, health=watching) as agent:
        assert agent.step().ok
        assert agent.installer.journal(MODEL).state.value == "trial"  # golden vectors passed; live calls pending
        slot = SlotStore(data_dir).current(MODEL)
        assert slot is not None
        manifest = slot.manifest()
        with Predictor(manifest, slot.path / manifest.model.file, config=RuntimeConfig(timeout_s=5.0)) as app:
            agent.use_predictor(app)
            good = app.predict(digits_case.x_val[:1])
            assert (good.version, good.fallback) == ("2.0.0", False)
            failed = app.predict(np.full((1, 64), -1000.0, np.float32))  # the trap raises inside ONNX Runtime
            assert failed.fallback
            assert agent._woken.is_set()  # the verdict woke the loop
            result = agent.step()
            agent.use_predictor(None)
        assert result.ok, result.error
        assert agent.installer.journal(MODEL).state.value == "rolled_back"
        assert agent.installed()[0].version == "1.0.0"
    rolled_back = [event for event in live.events() if event["kind"] == "rolled_back"]
    assert len(rolled_back) == 1
    assert "1 of the first 2 live inferences failed" in rolled_back[0]["reason"]
    assert rolled_back[0]["version"] == "2.0.0"


def test_a_device_installs_by_delta_once_the_fleet_asked_for_it(
    tmp_path: Path, signed: SignedBundles, device: DeviceProfile
) -> None:
    live = LiveServer(tmp_path / "server", signed.trusted_key)
    live.config = live.config.model_copy(update={"deltas": DeltaSettings(check_seconds=0.2, recheck_seconds=0)})
    live.start()
    try:
        for path in signed.versions.values():
            live.push(path)
        live.pin("1.0.0")
        first = make_agent(tmp_path / "a", live, device, live.enrollment_token(), device_id="pi-a")
        second = make_agent(tmp_path / "b", live, device, live.enrollment_token(), device_id="pi-b")
        with first, second:
            assert first.step().ok
            assert second.step().ok
            live.pin("1.1.0")
            assert first.step().ok  # the first to ask gets the full bundle, and makes the server build the delta
            deadline = time.monotonic() + 60
            while not any(d.delta for d in second.client.checkin(checkin_of(second), None).desired):
                assert time.monotonic() < deadline, "the delta was not built within 60 s"
                time.sleep(0.2)
            assert second.step().ok
            assert [m.version for m in second.installed()] == ["1.1.0"]
            assert first.step().ok  # sends the install events
            assert second.step().ok
        installs = {e["device_id"]: e["detail"] for e in live.events("pi-a") + live.events("pi-b") if
                    e["kind"] == "installed" and e["version"] == "1.1.0"}  # fmt: skip
        assert installs["pi-a"]["delivery"] == "full"
        assert installs["pi-b"]["delivery"] == "delta"
        assert 0 < installs["pi-b"]["delta_bytes"] < installs["pi-b"]["bytes_saved"]
        totals = {t["version"]: t for t in live.admin.get("/v1/admin/deliveries", params={"model": MODEL}).json()}
        size = signed.versions["1.1.0"].stat().st_size
        assert totals["1.1.0"] == {
            "version": "1.1.0", "installs": 2, "by_delta": 1, "bundle_bytes": 2 * size,
            "downloaded_bytes": size + installs["pi-b"]["delta_bytes"], "saved_bytes": installs["pi-b"]["bytes_saved"],
        }  # fmt: skip
        assert (totals["1.0.0"]["installs"], totals["1.0.0"]["by_delta"]) == (2, 0)
    finally:
        live.close()


def checkin_of(agent: Agent) -> CheckinRequest:
    return CheckinRequest(inventory=agent.profile, installed=tuple(agent.installed()))


@pytest.fixture(scope="module")
def tuned(signed: SignedBundles, digits_case: ModelCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits 1.2.0 (release 3): 1.0.0's weights fine-tuned, so the tensor codec wins its delta from 1.0.0."""
    directory = tmp_path_factory.mktemp("tuned")
    validation = ValidationSet(inputs={"X": digits_case.x_val}, labels=digits_case.y_val)
    out = directory / "digits-1.2.0.mfb"
    options = BuildOptions(name=MODEL, version="1.2.0", release=3, golden_count=4)
    model = fine_tuned(digits_case.path, directory / "tuned.onnx")
    build_bundle(model, validation, [SigningKey.from_file(signed.signing_key)], out, options)
    return out


# the delta formats the agent reads (None: this agent's own) -> the format of the delta it is offered (ADR 0010)
AGENT_FORMATS = {"an agent from before format 2": ((1,), 1), "this agent": (None, 2)}


@pytest.fixture(params=AGENT_FORMATS)
def agent_formats(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[int, ...], int]:
    """The formats the agent reports and the format it should be offered."""
    reads, offered = AGENT_FORMATS[request.param]
    if reads is None:
        return (1, 2), offered
    # An older agent cannot run beside this one: this agent's own code with its list cut plays it,
    # reporting those formats and refusing the others when it applies a delta.
    monkeypatch.setattr("modelfleet.agent._daemon.DELTA_READABLE_VERSIONS", reads)
    monkeypatch.setattr("modelfleet.bundle._delta_format.READABLE_VERSIONS", reads)
    return reads, offered


def test_an_agent_is_offered_a_delta_in_the_newest_format_it_reads_and_installs_by_it(
    tmp_path: Path,
    signed: SignedBundles,
    tuned: Path,
    device: DeviceProfile,
    agent_formats: tuple[tuple[int, ...], int],
) -> None:
    reads, offered = agent_formats
    live = LiveServer(tmp_path / "server", signed.trusted_key)
    live.config = live.config.model_copy(update={"deltas": DeltaSettings(check_seconds=0.1, recheck_seconds=0)})
    live.start()
    try:
        live.push(signed.versions["1.0.0"])
        live.push(tuned)
        live.pin("1.0.0")
        with make_agent(tmp_path / "agent", live, device, live.enrollment_token()) as agent:
            assert agent.step().ok
            assert checkin_of(agent).installed[0].delta_formats == reads
            live.pin("1.2.0")
            deadline = time.monotonic() + 60
            while (delta := agent.client.checkin(checkin_of(agent), None).desired[0].delta) is None:
                assert time.monotonic() < deadline, "the delta was not built within 60 s"
                time.sleep(0.1)
            fetched = httpx.get(delta.url, headers={"Authorization": f"Bearer {agent.client.credential}"})
            assert read_delta_header(fetched.content).format_version == offered
            assert agent.step().ok
            assert [m.version for m in agent.installed()] == ["1.2.0"]
            assert agent.step().ok  # sends the install events
        (installed,) = [e["detail"] for e in live.events() if e["kind"] == "installed" and e["version"] == "1.2.0"]
        assert installed["delivery"] == "delta", installed.get("delta_refused")
    finally:
        live.close()
