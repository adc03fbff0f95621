"""Over real HTTP (uvicorn on loopback): Range downloads, and one whole device and admin flow."""

import hashlib
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from modelfleet.bundle import PublicKey, TrustedKeys, read_bundle
from modelfleet.server import create_app


@pytest.fixture
def live(server_config, clock, engine):
    """The app served by uvicorn on 127.0.0.1:<free port>; public_url points at it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(server_config.model_copy(update={"public_url": url}), clock=clock, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    with httpx.Client(base_url=url, timeout=10) as http:
        yield http
    server.should_exit = True
    thread.join(10)
    sock.close()


class Http:
    """The fleet helper's admin and device calls, over the real connection."""

    def __init__(self, http, fleet):
        self.http, self.fleet = http, fleet

    def upload(self, path):
        data = path.read_bytes()

        def chunks():
            for start in range(0, len(data), 8192):
                yield data[start : start + 8192]

        headers = {**self.fleet.admin(), "Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        return self.http.post("/v1/admin/bundles", content=chunks(), headers=headers)

    def enroll(self, device, token):
        self.fleet.clock.advance(1)
        body = device.enroll_body(self.fleet.clock.now(), token)
        response = self.http.post("/v1/devices/enroll", content=body, headers={"Content-Type": "application/json"})
        device.credential = response.json()["credential"]
        return response


@pytest.fixture
def over_http(live, fleet, bundles):
    """A device enrolled over HTTP, pinned to 1.1.0, and the artifact it should fetch."""
    http = Http(live, fleet)
    for version in ("1.0.0", "1.1.0"):
        assert http.upload(bundles[version]).status_code == 201
    token = live.post("/v1/admin/enrollment-tokens", json={"tags": {"site": "berlin"}}, headers=fleet.admin()).json()
    device = fleet.new_device("pi-http-01")
    assert http.enroll(device, token["token"]).status_code == 200
    pin = {"model": "digits", "version": "1.1.0", "selector": {"site": "berlin"}}
    assert live.post("/v1/admin/pins", json=pin, headers=fleet.admin()).status_code == 201
    return device, bundles["1.1.0"].read_bytes()


def checkin(live, device, installed=(), etag=None):
    body = {
        "inventory": {"arch": "aarch64", "ram_bytes": 2**31, "disk_free_bytes": 2**33},
        "installed": list(installed),
    }
    headers = {**device.headers, **({"If-None-Match": etag} if etag else {})}
    return live.post("/v1/devices/checkin", json=body, headers=headers)


# (Range header, expected status, slice of the file as (start, stop) or None)
RANGES = {
    "no range": (None, 200, (0, None)),
    "first bytes": ("bytes=0-99", 206, (0, 100)),
    "open end": ("bytes=1000-", 206, (1000, None)),
    "suffix": ("bytes=-500", 206, (-500, None)),
    "end past the size": ("bytes=100-99999999", 206, (100, None)),
    "spaces tolerated": ("bytes = 0-9", 206, (0, 10)),
    "start past the end": ("bytes={size}-", 416, None),
    "empty suffix": ("bytes=-0", 416, None),
    "end before start": ("bytes=5-3", 416, None),
    "not a number": ("bytes=abc-", 416, None),
    "other unit": ("items=0-1", 416, None),
    "several ranges": ("bytes=0-1,5-6", 416, None),
}


def test_ranges_over_http(live, over_http):
    device, data = over_http
    sha = hashlib.sha256(data).hexdigest()
    for name, (header, status, span) in RANGES.items():
        headers = {**device.headers, **({"Range": header.format(size=len(data))} if header else {})}
        response = live.get(f"/v1/artifacts/{sha}", headers=headers)
        assert response.status_code == status, name
        if span is None:
            assert response.headers["Content-Range"] == f"bytes */{len(data)}", name
            assert response.json()["error"] == "range_not_satisfiable", name
            continue
        expected = data[span[0] : span[1]]
        assert response.content == expected, name
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["ETag"] == f'"{sha}"'
        if status == 206:
            first = span[0] % len(data)
            assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}", name


def test_a_download_resumed_from_where_it_stopped_is_the_exact_file(live, over_http):
    device, data = over_http
    sha = hashlib.sha256(data).hexdigest()
    pieces, offset = [], 0
    for stop in (4096, 10_000, len(data)):
        response = live.get(f"/v1/artifacts/{sha}", headers={**device.headers, "Range": f"bytes={offset}-{stop - 1}"})
        assert response.status_code == 206
        pieces.append(response.content)
        offset = stop
    assert b"".join(pieces) == data


def test_a_device_and_an_admin_over_http(live, over_http, fleet, tmp_path, summary):
    device, _ = over_http
    first = checkin(live, device)
    (desired,) = first.json()["desired"]
    base = str(live.base_url).rstrip("/")
    assert (desired["version"], desired["artifact"]["url"]) == (
        "1.1.0",
        f"{base}/v1/artifacts/{desired['artifact']['sha256']}",
    )
    with live.stream("GET", desired["artifact"]["url"], headers=device.headers) as response:
        downloaded = b"".join(response.iter_bytes())
    assert hashlib.sha256(downloaded).hexdigest() == desired["artifact"]["sha256"]
    (tmp_path / "got.mfb").write_bytes(downloaded)
    trusted = TrustedKeys.of([PublicKey.from_file(fleet.bundles.key_file)])
    assert read_bundle(tmp_path / "got.mfb", trusted).manifest.version == "1.1.0"

    installed = [{"model": "digits", "version": "1.1.0", "release": 2, "state": "committed"}]
    reported = checkin(live, device, installed, etag=first.headers["ETag"])
    assert reported.status_code == 304  # the desired state did not change; the report was stored
    assert checkin(live, device, installed, etag=first.headers["ETag"]).status_code == 304
    record = live.get(f"/v1/admin/devices/{device.id}", headers=fleet.admin("viewer")).json()
    assert record["installed"][0]["version"] == "1.1.0"

    sent = live.post("/v1/telemetry", json={"summaries": [summary(version="1.1.0", n=42)]}, headers=device.headers)
    assert sent.json() == {"accepted": 1, "duplicates": 0}
    windows = live.get("/v1/admin/telemetry/windows", params={"model": "digits"}, headers=fleet.admin("viewer"))
    assert [(w["version"], w["n"], w["devices"]) for w in windows.json()] == [("1.1.0", 42, 1)]

    metrics = live.get("/metrics").text
    assert "modelfleet_checkins_total 3.0" in metrics
    assert "modelfleet_checkins_not_modified_total 2.0" in metrics
    assert 'modelfleet_telemetry_summaries_total{result="accepted"} 1.0' in metrics
    assert live.get("/healthz").json() == {"status": "ok"}
