"""The agent's HTTP client against a real HTTP/1.1 server on loopback (plain and TLS)."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelfleet.agent import ClientTimeouts, ExchangeError, HttpClient, HttpTransport

BIG = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
        self.requests_here = 0

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet."""

    def do_GET(self) -> None:
        self.requests_here += 1
        path = self.path.split("?")[0]
        if path == "/drop-second" and self.requests_here > 1:
            self.close_connection = True  # read the request, then hang up without an answer
            return
        if path == "/slow":
            time.sleep(1.0)
        if path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 400)
            self.close_connection = True
            return
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"model", b"fleet", b""):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            return
        body = BIG if path == "/big" else f"hello {self.requests_here}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = path == "/then-close"  # after a keep-alive answer

    def do_POST(self) -> None:
        self.requests_here += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/drop-second" and self.requests_here > 1:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections = 0

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    with _Server() as running:
        thread = threading.Thread(target=running.serve_forever, daemon=True)
        thread.start()
        yield running
        running.shutdown()


def _fetch(client: HttpClient, url: str) -> tuple[int, bytes]:
    with client.request("GET", url) as reply:
        return reply.status_code, reply.read(len(BIG))


def test_requests_to_one_origin_share_a_kept_alive_connection(server: _Server) -> None:
    with HttpClient(base_url=server.url) as client:
        answers = [_fetch(client, "/a") for _ in range(3)]
        assert _fetch(client, "/chunked") == (200, b"modelfleet")
        assert _fetch(client, "/b") == (200, b"hello 5")
    assert answers == [(200, b"hello 1"), (200, b"hello 2"), (200, b"hello 3")]
    assert server.connections == 1


def test_a_connection_the_peer_closed_while_idle_is_not_reused(server: _Server) -> None:
    with HttpClient(base_url=server.url) as client:
        assert _fetch(client, "/then-close") == (200, b"hello 1")
        time.sleep(0.2)  # the server hangs up the kept-alive connection, as its idle timeout would
        with client.request("POST", "/echo", body=b"enroll", idempotent=False) as reply:  # never resent: not retried
            assert reply.read(100) == b"enroll"
    assert server.connections == 2


def test_an_idempotent_request_is_retried_once_when_a_reused_connection_is_cut(server: _Server) -> None:
    with HttpClient(base_url=server.url) as client:
        assert _fetch(client, "/drop-second") == (200, b"hello 1")
        assert _fetch(client, "/drop-second") == (200, b"hello 1")  # on a fresh connection
        with client.request("POST", "/drop-second", body=b"summary", idempotent=True) as reply:
            assert reply.read(100) == b"summary"  # the telemetry route stores each id once: resent
        with pytest.raises(ExchangeError) as failed:
            client.request("POST", "/drop-second", body=b"enroll", idempotent=False)
    assert failed.value.code == "connection"
    assert server.connections == 3


def test_a_body_cut_short_of_its_length_is_a_failure_not_a_short_answer(server: _Server) -> None:
    with HttpClient(base_url=server.url) as client, client.request("GET", "/cut") as reply:
        chunks = reply.iter_bytes(100)
        received = b"".join(next(chunks) for _ in range(4))
        with pytest.raises(ExchangeError) as failed:
            next(chunks)
    assert received == b"x" * 400
    assert failed.value.code == "connection"
    assert "600 of its declared bytes missing" in failed.value.message


def test_a_silent_peer_is_a_read_timeout(server: _Server) -> None:
    with HttpClient(base_url=server.url, timeouts=ClientTimeouts(connect_s=5, read_s=0.2)) as client:
        started = time.monotonic()
        with pytest.raises(ExchangeError) as failed:
            client.request("GET", "/slow")
        assert time.monotonic() - started < 0.9
    assert failed.value.code == "read_timeout"


def test_a_refused_connection_is_a_connection_failure() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with HttpClient() as client, pytest.raises(ExchangeError) as failed:
        client.request("GET", f"http://127.0.0.1:{port}/")
    assert failed.value.code == "connection"
    assert f"127.0.0.1:{port}" in failed.value.message


def test_an_unsupported_url_is_refused_before_any_connection() -> None:
    with HttpClient() as client, pytest.raises(ExchangeError, match="only absolute http and https"):
        client.request("GET", "file:///etc/passwd")


def test_closing_a_response_early_drops_its_connection_and_the_next_request_works(server: _Server) -> None:
    with HttpClient(base_url=server.url) as client:
        with client.request("GET", "/big") as reply:
            first = next(reply.iter_bytes(1024))
        assert first == BIG[:1024]
        assert _fetch(client, "/big") == (200, BIG)
    assert server.connections == 2


def test_a_body_over_the_bound_is_refused(server: _Server) -> None:
    with (
        HttpClient(base_url=server.url) as client,
        client.request("GET", "/big") as reply,
        pytest.raises(ExchangeError) as failed,
    ):
        reply.read(1000)
    assert failed.value.code == "too_large"


def test_threads_share_one_transport_safely(server: _Server) -> None:
    transport = HttpTransport(max_idle_per_origin=8)
    bodies: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        client = HttpClient(base_url=server.url, transport=transport)
        for _ in range(25):
            with client.request("GET", "/x") as reply:
                body = reply.read(100)
            with lock:
                bodies.append(body)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    transport.close()
    assert len(bodies) == 200
    assert all(body.startswith(b"hello ") for body in bodies)
    assert server.connections <= 8 * 2  # kept alive, not one per request


def test_a_connection_idle_longer_than_the_bound_is_not_reused(server: _Server) -> None:
    transport = HttpTransport(idle_s=0.05)
    with HttpClient(base_url=server.url, transport=transport) as client:
        _fetch(client, "/a")
        time.sleep(0.1)
        assert _fetch(client, "/a") == (200, b"hello 1")
    transport.close()
    assert server.connections == 2


# ------------------------------------------------------------------ TLS


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _Server() as running:
        running.socket = context.wrap_socket(running.socket, server_side=True)
        thread = threading.Thread(target=running.serve_forever, daemon=True)
        thread.start()
        yield running, cert
        running.shutdown()


def test_https_to_a_server_the_context_trusts(tls_server: tuple[_Server, Path]) -> None:
    server, cert = tls_server
    trusted = ssl.create_default_context(cafile=str(cert))
    with HttpClient(base_url=server.url, transport=HttpTransport(ssl_context=trusted)) as client:
        assert _fetch(client, "/a") == (200, b"hello 1")
        assert _fetch(client, "/chunked") == (200, b"modelfleet")
        with client.request("POST", "/echo", body=b"summary") as reply:
            assert reply.read(100) == b"summary"
    assert server.connections == 1


def test_https_to_an_untrusted_server_fails_the_handshake(tls_server: tuple[_Server, Path]) -> None:
    server, _cert = tls_server
    with HttpClient() as client, pytest.raises(ExchangeError) as failed:
        client.request("GET", f"{server.url}/a")
    assert failed.value.code == "connection"
    assert "TLS handshake" in failed.value.message
