"""Real bundles and a real HTTP server for the agent's install tests.

The digits MLP is trained once per session; bundles are built from it once per
module with ``build_bundle`` (a healthy v1 and v2, a v3 whose latency budget no
model can meet, a v4 for another architecture). :class:`BundleServer` is a threaded
``http.server`` on 127.0.0.1 with ``Range`` support and knobs to stall, trickle, send
more bytes than declared, drop the connection, corrupt ranged replies, and call back
while sending (to fill a disk at the worst moment). :class:`ForwardingProxy` is a real
HTTP proxy (CONNECT tunnels and absolute-form forwarding) that counts what it saw.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import os
import platform
import re
import select
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import onnxruntime as ort
import pytest

from modelfleet.agent import DownloadPolicy, HealthPolicy, InstallConfig
from modelfleet.bundle import (
    BuildOptions,
    DeviceProfile,
    HardwareTargets,
    Manifest,
    SigningKey,
    TrustedKeys,
    ValidationSet,
    build_bundle,
)
from modelfleet.protocol import Artifact, DesiredModel
from modelfleet.sim import ModelCase, digits_mlp

MODEL = "digits"
SHARED_BROKER = ("127.0.0.1", 1883)
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


# ------------------------------------------------------------------ bundles


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle on disk and what an assignment says about it."""

    path: Path
    manifest: Manifest
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def slot(self) -> str:
        return f"{self.manifest.version}-{self.sha256[:12]}"

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class Bundles:
    """The module's bundles and the key set that trusts them."""

    trusted: TrustedKeys
    v1: BuiltBundle
    v2: BuiltBundle
    slow: BuiltBundle
    alien: BuiltBundle


@pytest.fixture(scope="session")
def digits_case(tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    """The small digits MLP (8 hidden units), trained once per session."""
    return digits_mlp(tmp_path_factory.mktemp("digits") / "digits.onnx", hidden=8)


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


def build(case: ModelCase, key: SigningKey, out: Path, version: str, release: int, **options: object) -> BuiltBundle:
    """Build and sign one bundle of the digits model."""
    validation = ValidationSet(inputs={"X": case.x_val}, labels=case.y_val)
    manifest = build_bundle(
        case.path,
        validation,
        [key],
        out,
        BuildOptions(name=MODEL, version=version, release=release, golden_count=4, **options),  # type: ignore[arg-type]
    )
    return BuiltBundle(out, manifest, out.read_bytes())


@pytest.fixture(scope="module")
def bundles(digits_case: ModelCase, signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """v1 and v2 (healthy), v3 (impossible latency budget), v4 (riscv64 only), built once per module."""
    out = tmp_path_factory.mktemp("bundles")
    return Bundles(
        trusted=TrustedKeys.of([signing_key.public]),
        v1=build(digits_case, signing_key, out / "v1.mfb", "1.0.0", 1),
        v2=build(digits_case, signing_key, out / "v2.mfb", "2.0.0", 2),
        slow=build(digits_case, signing_key, out / "v3.mfb", "3.0.0", 3, max_latency_ms=1e-6),
        alien=build(digits_case, signing_key, out / "v4.mfb", "4.0.0", 4, hardware=HardwareTargets(arch=("riscv64",))),
    )


@pytest.fixture(scope="module")
def device() -> DeviceProfile:
    """This machine as a device that fits every bundle but the riscv64 one."""
    return DeviceProfile(
        arch=platform.machine(),
        runtimes={"onnxruntime": ort.__version__},
        ram_bytes=8 << 30,
        disk_free_bytes=64 << 30,
    )


# ------------------------------------------------------------------ the server


@dataclass
class Route:
    """What the server sends for one path, and how badly.

    Attributes:
        data: the file.
        chunk: bytes per write.
        delay: seconds between writes (a trickle).
        stall_after: stop sending after this many body bytes and hold the connection.
        drop_after: close the connection after this many body bytes, for the first ``drops`` replies.
        extra: bytes appended beyond the file (more than declared).
        declare_length: send ``Content-Length`` (else the body ends when the connection closes).
        honor_range: answer ``Range`` with 206 (else 200 with the whole file).
        corrupt_ranges: flip the first byte of this many 206 replies.
        status: reply with this status and no body instead.
        on_sent: called with the body bytes sent so far after each write.
    """

    data: bytes
    chunk: int = 4096
    delay: float = 0.0
    stall_after: int | None = None
    drop_after: int | None = None
    drops: int = 1
    extra: bytes = b""
    declare_length: bool = True
    honor_range: bool = True
    corrupt_ranges: int = 0
    status: int | None = None
    on_sent: Callable[[int], None] | None = None


@dataclass
class Request:
    path: str
    range: str | None


@dataclass
class BundleServer:
    """A threaded HTTP server on 127.0.0.1 that serves :class:`Route` s."""

    httpd: http.server.ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, name: str, data: bytes, **knobs: object) -> str:
        """Serve ``data`` at ``/name`` with :class:`Route` knobs and return its URL."""
        self.routes[name] = Route(data, **knobs)  # type: ignore[arg-type]
        return self.url(name)

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/{name}"

    def seen(self, name: str) -> list[Request]:
        """Requests for ``/name`` so far."""
        with self.lock:
            return [r for r in self.requests if r.path == f"/{name}"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        """Keep test output quiet."""

    def do_GET(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(Request(self.path, self.headers.get("Range")))
            route = owner.routes.get(self.path.lstrip("/"))
        if route is None or route.status is not None:
            self._empty(404 if route is None else route.status or 500)
            return
        self._send(route, owner)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, route: Route, owner: BundleServer) -> None:
        start, body, status = self._select(route, owner)
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(route.data) - 1}/{len(route.data)}")
        if route.declare_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._write(route, owner, body)

    def _select(self, route: Route, owner: BundleServer) -> tuple[int, bytes, int]:
        match = _RANGE.match(self.headers.get("Range") or "")
        if match is None or not route.honor_range:
            return 0, route.data + route.extra, 200
        start = int(match.group(1))
        end = int(match.group(2)) + 1 if match.group(2) else len(route.data)
        body = bytearray(route.data[start:end] + route.extra)
        with owner.lock:
            if route.corrupt_ranges > 0 and start > 0:
                route.corrupt_ranges -= 1
                body[0] ^= 0xFF
        return start, bytes(body), 206

    def _write(self, route: Route, owner: BundleServer, body: bytes) -> None:
        with owner.lock:
            drop = route.drop_after is not None and route.drops > 0
            if drop:
                route.drops -= 1
        sent = 0
        try:
            while sent < len(body):
                if drop and route.drop_after is not None and sent >= route.drop_after:
                    self.close_connection = True
                    return
                if route.stall_after is not None and sent >= route.stall_after:
                    owner.release.wait(30)
                    return
                piece = body[sent : sent + route.chunk]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if route.on_sent is not None:
                    route.on_sent(sent)
                if route.delay:
                    time.sleep(route.delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: BundleServer

    def handle_error(self, request: object, client_address: object) -> None:
        """A client killed mid-transfer is what these tests do on purpose; keep the log quiet."""


@pytest.fixture(scope="module")
def server() -> Iterator[BundleServer]:
    """A bundle server for the module; routes are added by each test."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    owner = BundleServer(httpd)
    httpd.owner = owner
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield owner
    owner.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


# ------------------------------------------------------------------ the kit


@dataclass
class Kit:
    """What an install test needs: bundles, this device, the server, and helpers."""

    bundles: Bundles
    device: DeviceProfile
    server: BundleServer
    case: ModelCase
    workdir: Path

    def build(self, version: str, release: int, key: SigningKey | None = None, **options: object) -> BuiltBundle:
        """Another bundle of the digits model (signed by ``key``, else by a fresh untrusted key)."""
        out = self.workdir / f"extra-{version}.mfb"
        return build(self.case, key or SigningKey.generate(), out, version, release, **options)

    def serve(self, name: str, data: bytes, **knobs: object) -> str:
        """Serve ``data`` at ``/name`` with :class:`Route` knobs; return the URL."""
        return self.server.serve(name, data, **knobs)

    def config(self, **overrides: object) -> InstallConfig:
        """An install configuration with quick, bounded downloads and a short health check."""
        fields: dict[str, object] = {
            "trusted": self.bundles.trusted,
            "device": self.device,
            "keep_versions": 2,
            "download": DownloadPolicy(
                deadline_s=10.0,
                read_timeout_s=1.0,
                window_s=1.0,
                max_retries=2,
                backoff_base_s=0.01,
                backoff_cap_s=0.05,
                head_bytes=2048,
            ),
            "health": HealthPolicy(latency_runs=3),
        }
        fields.update(overrides)
        return InstallConfig(**fields)  # type: ignore[arg-type]

    def desired(
        self, bundle: BuiltBundle, name: str | None = None, *, rollback: bool = False, sha256: str | None = None
    ) -> DesiredModel:
        """What a server would send for ``bundle``, served as is at ``/name`` unless a route exists."""
        name = name or bundle.path.name
        if name not in self.server.routes:
            self.server.serve(name, bundle.data)
        return DesiredModel(
            model=MODEL,
            version=bundle.version,
            release=bundle.manifest.release,
            rollback=rollback,
            rollout_id="rollout-1",
            artifact=Artifact(url=self.server.url(name), sha256=sha256 or bundle.sha256, size=len(bundle.data)),
        )

    @staticmethod
    def leftovers(root: Path) -> list[str]:
        """Everything under ``root/models`` that is not a version, a link or a journal."""
        return leftovers(root)

    @staticmethod
    def copy_store(source: Path, dest: Path) -> Path:
        """Copy an agent root, links as links and read-only versions as they are."""
        shutil.copytree(source, dest, symlinks=True)
        return dest


@pytest.fixture(scope="module")
def kit(
    bundles: Bundles,
    device: DeviceProfile,
    server: BundleServer,
    digits_case: ModelCase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Kit:
    return Kit(bundles, device, server, digits_case, tmp_path_factory.mktemp("kit"))


def leftovers(root: Path) -> list[str]:
    """Everything under ``root/models`` that is not a published version, a link, a journal or a lock."""
    found = []
    for model in (root / "models").iterdir():
        for entry in model.iterdir():
            if entry.name in {"current", "previous", "journal.json"}:
                continue
            if entry.name in {"versions", "downloads"}:
                inner = [p for p in entry.iterdir() if p.name.startswith(".") or entry.name == "downloads"]
                found += [str(p.relative_to(root)) for p in inner]
                continue
            found.append(str(entry.relative_to(root)))
    return sorted(found)


# ------------------------------------------------------------------ the MQTT broker


def missing_broker(reason: str) -> None:
    """Skip a test that needs Mosquitto, but fail it under ``CI=true`` where the broker must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the MQTT tests must run)")
    pytest.skip(reason)


@pytest.fixture
def broker_url() -> str:
    """The shared Mosquitto on 127.0.0.1:1883 that wake-up tests publish through."""
    try:
        socket.create_connection(SHARED_BROKER, timeout=2).close()
    except OSError as exc:
        missing_broker(f"no MQTT broker on 127.0.0.1:1883 ({exc}); start mosquitto")
    return f"mqtt://{SHARED_BROKER[0]}:{SHARED_BROKER[1]}"


@pytest.fixture
def mosquitto_binary() -> str:
    """The Mosquitto executable, for tests that start and kill a broker of their own."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        missing_broker("the mosquitto binary is not installed")
    assert binary is not None
    return binary


# ------------------------------------------------------------------ a forwarding HTTP proxy

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer"}
    | {"transfer-encoding", "upgrade"}
)


@dataclass(frozen=True)
class ProxiedRequest:
    """A request the proxy received: method, target as sent (``host:port`` or an absolute URL), headers."""

    method: str
    target: str
    headers: dict[str, str]


class ForwardingProxy(http.server.ThreadingHTTPServer):
    """A real HTTP proxy on 127.0.0.1: relays CONNECT tunnels byte for byte, forwards absolute-form requests.

    Like a real proxy it resolves names itself (``hosts``: names only it knows, such as
    ``fleet.test``) and strips hop-by-hop headers, ``Proxy-Authorization`` included, before forwarding.

    Attributes:
        seen: every request it received, in order.
        hosts: names it resolves to addresses.
        credentials: ``user:password`` it demands (407 without them), if any.
        refuse: a status it answers every CONNECT with instead of opening the tunnel, if any.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.lock = threading.Lock()
        self.seen: list[ProxiedRequest] = []
        self.hosts: dict[str, str] = {}
        self.credentials: str | None = None
        self.refuse: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with credentials in it, as ``HTTPS_PROXY`` would hold them."""
        return f"http://{user}:{password}@127.0.0.1:{self.server_address[1]}"

    def requests(self) -> list[tuple[str, str]]:
        """``(method, target)`` of every request so far."""
        with self.lock:
            return [(seen.method, seen.target) for seen in self.seen]

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-relay is normal here; keep the log quiet."""


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardingProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        """Keep test output quiet."""

    def do_CONNECT(self) -> None:
        if not self._admitted():
            return
        if self.server.refuse is not None:
            self._answer(self.server.refuse)
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((self.server.hosts.get(host, host), int(port)), timeout=10)
        except OSError:
            self._answer(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            _relay(self.connection, upstream)

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _admitted(self) -> bool:
        """Record the request; answer 407 when credentials are demanded and missing or wrong."""
        with self.server.lock:
            self.server.seen.append(ProxiedRequest(self.command, self.path, dict(self.headers.items())))
        wanted = self.server.credentials
        if wanted is None or self.headers.get("Proxy-Authorization") == basic(wanted):
            return True
        self._answer(407, {"Proxy-Authenticate": 'Basic realm="test proxy"'})
        return False

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if not self._admitted():
            return
        target = urlsplit(self.path)
        assert target.hostname is not None, f"not an absolute-form request: {self.path}"
        host = self.server.hosts.get(target.hostname, target.hostname)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(host, target.port or 80, timeout=10)
        try:
            path = (target.path or "/") + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, body=body, headers=headers)
            reply = upstream.getresponse()
            content = reply.read()
        except OSError:
            self._answer(502)
            return
        finally:
            upstream.close()
        self.send_response(reply.status, reply.reason)
        for name, value in reply.getheaders():
            if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.close_connection = True


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or both stay silent for 30 s)."""
    peers = {client: upstream, upstream: client}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 30)
        if not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(64 * 1024)
                if not data:
                    return
                peers[sock].sendall(data)
            except OSError:
                return


def basic(credentials: str) -> str:
    """The ``Proxy-Authorization`` value for ``user:password``."""
    return "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


@pytest.fixture
def forwarding_proxy() -> Iterator[ForwardingProxy]:
    """A forwarding proxy for one test, counting what it saw."""
    with ForwardingProxy() as proxy:
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        yield proxy
        proxy.shutdown()
