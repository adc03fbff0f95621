"""``DeviceClient`` and the device identity against a real server (uvicorn on loopback, SQLite)."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from modelfleet.agent import (
    ClockSkewError,
    CredentialFile,
    CredentialRejectedError,
    DeviceClient,
    DeviceIdentity,
)
from modelfleet.agent._client import ServerAuth
from modelfleet.agent._http import HttpClient, MockTransport, Request, Response
from modelfleet.bundle import DeviceProfile
from modelfleet.clock import ManualClock, SystemClock
from modelfleet.errors import ConfigError, ConflictError, PermissionDeniedError, TransportError
from modelfleet.protocol import CheckinRequest, EventBatch, TelemetryBatch, enrollment_message
from modelfleet.server import create_app, init_server, load_server_config
from modelfleet.telemetry import Event

PROFILE = DeviceProfile(arch="aarch64", ram_bytes=2**31, disk_free_bytes=2**33)


class Live:
    def __init__(self, url: str, admin: httpx.Client) -> None:
        self.url, self.admin = url, admin

    def token(self) -> str:
        reply = self.admin.post("/v1/admin/enrollment-tokens", json={"max_uses": 5})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["token"])


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    made = init_server(tmp_path / "server")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = load_server_config(tmp_path / "server").model_copy(update={"public_url": url})
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {made.admin_token}"}) as admin:
        yield Live(url, admin)
    server.should_exit = True
    thread.join(20)
    sock.close()


def enrolled(tmp_path: Path, live: Live, device_id: str = "pi-client-01") -> tuple[DeviceClient, DeviceIdentity]:
    identity = DeviceIdentity.load_or_create(tmp_path / device_id, device_id)
    client = DeviceClient(live.url)
    answer = client.enroll(identity.enroll_request(PROFILE, SystemClock(), live.token()))
    assert answer.status == "accepted"
    assert client.credential is not None
    assert client.credential.startswith("mfd_")
    return client, identity


def event(number: int) -> Event:
    return Event(id=f"event-{number:04d}", kind="installed", at=datetime.now(UTC), model="digits", version="1.0.0")


def test_identity_files_are_private_and_stable(tmp_path: Path) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path, "pi-key-01")
    again = DeviceIdentity.load_or_create(tmp_path)
    assert again.device_id == "pi-key-01"
    assert again.public_key == identity.public_key
    assert (tmp_path / "identity" / "device.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError) as refused:
        DeviceIdentity.load_or_create(tmp_path, "pi-other")
    assert refused.value.code == "identity_mismatch"
    generated = DeviceIdentity.load_or_create(tmp_path / "fresh")
    assert generated.device_id.startswith("dev-")
    credentials = CredentialFile(tmp_path)
    assert credentials.load() is None
    credentials.save("mfd_secret")
    assert credentials.load() == "mfd_secret"
    assert credentials.path.stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "identity").glob(".*.tmp"))
    credentials.clear()
    assert credentials.load() is None


def test_enroll_request_is_signed_with_the_clock_time(tmp_path: Path) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path, "pi-sign-01")
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    request = identity.enroll_request(PROFILE, ManualClock(at), "mfe_token")
    assert request.issued_at == at
    signature = base64.b64decode(request.proof)
    identity.key.public_key().verify(signature, enrollment_message(request))  # raises when wrong


def test_an_identity_whose_key_belongs_to_another_device_is_refused_when_it_signs(tmp_path: Path) -> None:
    mine = DeviceIdentity.load_or_create(tmp_path / "mine", "pi-mine-01")
    other = DeviceIdentity.load_or_create(tmp_path / "other", "pi-other-01")
    (tmp_path / "mine" / "identity" / "device.key").write_bytes(other.key_pem)
    swapped = DeviceIdentity.load(tmp_path / "mine")
    assert swapped is not None
    assert swapped.public_key == mine.public_key  # device.json still names the first key pair
    with pytest.raises(ConfigError) as refused:
        swapped.enroll_request(PROFILE, SystemClock(), "mfe_token")
    assert refused.value.code == "bad_identity"
    (tmp_path / "mine" / "identity" / "device.key").write_bytes(b"not a key")
    with pytest.raises(ConfigError) as unreadable:
        DeviceIdentity.load(tmp_path / "mine")
    assert unreadable.value.code == "bad_identity"


def test_enroll_pending_then_accepted(tmp_path: Path, live: Live) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path, "pi-wait-01")
    with DeviceClient(live.url) as client:
        answer = client.enroll(identity.enroll_request(PROFILE, SystemClock()))
        assert answer.status == "pending"
        assert client.credential is None
        assert live.admin.post("/v1/admin/devices/pi-wait-01/approve").status_code == 200
        answer = client.enroll(identity.enroll_request(PROFILE, SystemClock()))
        assert answer.status == "accepted"
        assert client.credential == answer.credential


def test_checkin_etag_and_304(tmp_path: Path, live: Live) -> None:
    client, _ = enrolled(tmp_path, live)
    with client:
        request = CheckinRequest(inventory=PROFILE)
        first = client.checkin(request)
        assert first is not None
        assert first.device_id == "pi-client-01"
        etag = client.last_etag
        assert etag
        assert client.checkin(request, etag) is None
        assert client.last_etag == etag


def test_batches_are_idempotent(tmp_path: Path, live: Live) -> None:
    client, _ = enrolled(tmp_path, live)
    with client:
        batch = EventBatch(events=tuple(event(i) for i in range(3)))
        first = client.send_events(batch)
        assert (first.accepted, first.duplicates) == (3, 0)
        again = client.send_events(batch)
        assert (again.accepted, again.duplicates) == (0, 3)
        empty = client.send_telemetry(TelemetryBatch(summaries=()))
        assert (empty.accepted, empty.duplicates) == (0, 0)
    stored = live.admin.get("/v1/admin/events", params={"device_id": "pi-client-01"}).json()
    assert len(stored) == 3


def test_revoked_credential_is_rejected_and_reenroll_refused(tmp_path: Path, live: Live) -> None:
    client, identity = enrolled(tmp_path, live)
    with client:
        assert live.admin.post("/v1/admin/devices/pi-client-01/revoke").status_code == 200
        with pytest.raises(CredentialRejectedError):
            client.checkin(CheckinRequest(inventory=PROFILE))
        with pytest.raises(CredentialRejectedError):
            client.send_events(EventBatch(events=(event(1),)))
        with pytest.raises(PermissionDeniedError):
            client.enroll(identity.enroll_request(PROFILE, SystemClock(), live.token()))


def test_no_credential_is_refused_locally(live: Live) -> None:
    with DeviceClient(live.url) as client, pytest.raises(CredentialRejectedError) as refused:
        client.checkin(CheckinRequest(inventory=PROFILE))
    assert refused.value.code == "no_credential"


def test_clock_skew_reports_the_server_time(tmp_path: Path, live: Live) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path, "pi-skew-01")
    stale = ManualClock(datetime.now(UTC) - timedelta(days=3))
    with DeviceClient(live.url) as client, pytest.raises(ClockSkewError) as refused:
        client.enroll(identity.enroll_request(PROFILE, stale, live.token()))
    assert refused.value.server_time is not None
    assert abs(refused.value.server_time - datetime.now(UTC)) < timedelta(minutes=1)


def test_other_key_for_a_known_device_is_a_conflict(tmp_path: Path, live: Live) -> None:
    client, _ = enrolled(tmp_path, live)
    client.close()
    impostor = DeviceIdentity.load_or_create(tmp_path / "impostor", "pi-client-01")
    with DeviceClient(live.url) as other, pytest.raises(ConflictError):
        other.enroll(impostor.enroll_request(PROFILE, SystemClock(), live.token()))


def test_unreachable_server_is_a_transport_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with DeviceClient(f"http://127.0.0.1:{port}", credential="mfd_x") as client:
        with pytest.raises(TransportError) as failed:
            client.checkin(CheckinRequest(inventory=PROFILE))
        assert failed.value.code == "connection"


def test_server_auth_sends_the_credential_to_the_server_only() -> None:
    auth = ServerAuth("https://fleet.example.com", lambda: "mfd_secret")
    seen: list[tuple[str, str | None]] = []

    def handler(request: Request) -> Response:
        seen.append((request.url, request.headers.get("Authorization")))
        return Response.of(200)

    with HttpClient(transport=MockTransport(handler), auth=auth) as http:
        for url in (
            "https://fleet.example.com/v1/artifacts/abc",
            "https://fleet.example.com:443/x",
            "https://cdn.example.net/abc",
            "http://fleet.example.com/v1/artifacts/abc",
        ):
            http.request("GET", url).close()
    assert [header for _, header in seen] == ["Bearer mfd_secret", "Bearer mfd_secret", None, None]


def test_a_redirect_to_another_origin_carries_no_credential() -> None:
    auth = ServerAuth("https://fleet.example.com", lambda: "mfd_secret")
    seen: list[tuple[str, str, str | None]] = []

    def handler(request: Request) -> Response:
        seen.append((request.method, request.url, request.headers.get("Authorization")))
        if request.url.startswith("https://fleet.example.com"):
            return Response.of(307, headers={"Location": "https://cdn.example.net/blob?sig=1"})
        return Response.of(200, b"payload")

    with (
        HttpClient(transport=MockTransport(handler), auth=auth) as http,
        http.request("GET", "https://fleet.example.com/v1/artifacts/abc") as reply,
    ):
        assert (reply.status_code, reply.read(100)) == (200, b"payload")
    assert seen == [
        ("GET", "https://fleet.example.com/v1/artifacts/abc", "Bearer mfd_secret"),
        ("GET", "https://cdn.example.net/blob?sig=1", None),
    ]


def test_endless_redirects_are_a_transport_error() -> None:
    loop = MockTransport(lambda request: Response.of(302, headers={"Location": request.url}))
    with HttpClient(transport=loop, max_redirects=3) as http, pytest.raises(TransportError) as failed:
        http.request("GET", "http://fleet.test/a")
    assert failed.value.code == "connection"
    assert "more than 3 redirects" in failed.value.message


def test_server_errors_are_transport_errors() -> None:
    busy = b'{"error": "busy", "message": "later"}'
    transport = MockTransport(lambda _request: Response.of(503, busy, {"Content-Type": "application/json"}))
    with DeviceClient("http://fleet.test", credential="mfd_x", transport=transport) as client:
        with pytest.raises(TransportError) as failed:
            client.checkin(CheckinRequest(inventory=PROFILE))
        assert failed.value.code == "http_503"
    garbled = MockTransport(lambda _request: Response.of(200, b"<html>"))
    with DeviceClient("http://fleet.test", credential="mfd_x", transport=garbled) as client:
        with pytest.raises(TransportError) as failed:
            client.checkin(CheckinRequest(inventory=PROFILE))
        assert failed.value.code == "bad_response"
