"""The agent's HTTP client against a real HTTP/1.1 server on loopback (plain and TLS), direct and through a proxy."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelfleet.agent import ClientTimeouts, ExchangeError, HttpClient, HttpTransport
from modelfleet.agent._failures import http_failure
from modelfleet.agent._http import origin_of
from modelfleet.agent._proxy import ProxyRoutes
from modelfleet.config import ProxyServer, ProxySettings

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
        self._note()
        path, _, query = self.path.partition("?")
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", unquote(query.removeprefix("to=")))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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
        self._note()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/drop-second" and self.requests_here > 1:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _note(self) -> None:
        with self.server.lock:
            self.server.seen.append(dict(self.headers.items()))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.seen: list[dict[str, str]] = []  # the headers of every request

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
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("fleet.test")]
            ),
            critical=False,
        )
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


# ------------------------------------------------------------------ proxies


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


def _through(proxy_url: str, *, no_proxy: tuple[str, ...] = (), context: ssl.SSLContext | None = None) -> HttpTransport:
    """A transport sending both schemes through ``proxy_url``, except to the ``no_proxy`` hosts."""
    server = ProxyServer.from_url(proxy_url)
    return HttpTransport(ssl_context=context, proxies=ProxySettings(http=server, https=server, no_proxy=no_proxy))


def _port(server: _Server) -> int:
    return int(server.server_address[1])


def _origin(request: pytest.FixtureRequest, scheme: str) -> tuple[_Server, Path | None]:
    """The plain or the TLS server (only the one a test needs: each costs half a second to stop)."""
    if scheme == "http":
        return request.getfixturevalue("server"), None
    return request.getfixturevalue("tls_server")


def test_https_goes_through_a_connect_tunnel_to_a_host_only_the_proxy_can_resolve(
    tls_server: tuple[_Server, Path], forwarding_proxy
) -> None:
    server, cert = tls_server
    forwarding_proxy.hosts["fleet.test"] = "127.0.0.1"
    transport = _through(forwarding_proxy.url, context=ssl.create_default_context(cafile=str(cert)))
    origin = f"https://fleet.test:{_port(server)}"
    with HttpClient(base_url=origin, transport=transport, auth=lambda _url: "Bearer mfd_device") as client:
        assert _fetch(client, "/a") == (200, b"hello 1")
        with client.request("POST", "/echo", body=b"summary") as reply:
            assert reply.read(100) == b"summary"
    transport.close()
    assert forwarding_proxy.requests() == [("CONNECT", f"fleet.test:{_port(server)}")]  # one tunnel, kept alive
    assert server.connections == 1
    assert [seen["Authorization"] for seen in server.seen] == ["Bearer mfd_device"] * 2  # end to end, in the tunnel
    assert [seen["Host"] for seen in server.seen] == [f"fleet.test:{_port(server)}"] * 2
    assert "Authorization" not in forwarding_proxy.seen[0].headers


def test_tls_in_the_tunnel_is_checked_against_the_origin_name(
    tls_server: tuple[_Server, Path], forwarding_proxy
) -> None:
    server, cert = tls_server
    forwarding_proxy.hosts["other.test"] = "127.0.0.1"  # the same server, whose certificate does not name it
    transport = _through(forwarding_proxy.url, context=ssl.create_default_context(cafile=str(cert)))
    with HttpClient(transport=transport) as client, pytest.raises(ExchangeError) as failed:
        client.request("GET", f"https://other.test:{_port(server)}/a")
    assert failed.value.code == "connection"
    assert failed.value.message.startswith(f"TLS handshake with other.test:{_port(server)} through proxy ")
    assert "certificate verify failed" in failed.value.message


def test_http_goes_to_the_proxy_in_absolute_form(server: _Server, forwarding_proxy) -> None:
    forwarding_proxy.hosts["fleet.test"] = "127.0.0.1"
    origin = f"http://fleet.test:{_port(server)}"
    with HttpClient(base_url=origin, transport=_through(forwarding_proxy.url)) as client:
        assert _fetch(client, "/a?x=1") == (200, b"hello 1")
        with client.request("POST", "/echo", body=b"enroll", idempotent=False) as reply:
            assert reply.read(100) == b"enroll"
        client.transport.close()
    assert forwarding_proxy.requests() == [("GET", f"{origin}/a?x=1"), ("POST", f"{origin}/echo")]
    assert [seen["Host"] for seen in server.seen] == [f"fleet.test:{_port(server)}"] * 2


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_no_proxy_hosts_go_direct_and_the_proxy_sees_nothing(
    scheme: str, request: pytest.FixtureRequest, forwarding_proxy
) -> None:
    origin, cert = _origin(request, scheme)
    context = ssl.create_default_context(cafile=str(cert)) if cert else None
    transport = _through(forwarding_proxy.url, no_proxy=("example.com", "127.0.0.1"), context=context)
    with HttpClient(base_url=origin.url, transport=transport) as client:
        assert _fetch(client, "/a") == (200, b"hello 1")
    transport.close()
    assert forwarding_proxy.requests() == []
    assert origin.connections == 1


def test_a_redirect_to_a_no_proxy_host_leaves_the_proxy(server: _Server, forwarding_proxy) -> None:
    forwarding_proxy.hosts["fleet.test"] = "127.0.0.1"
    direct = f"http://127.0.0.1:{_port(server)}/b"
    transport = _through(forwarding_proxy.url, no_proxy=("127.0.0.1",))
    with HttpClient(transport=transport, auth=lambda _url: None) as client:
        start = f"http://fleet.test:{_port(server)}/redirect?to={quote(direct, safe='')}"
        with client.request("GET", start) as reply:
            assert (reply.url, reply.read(100)) == (direct, b"hello 1")
    transport.close()
    assert forwarding_proxy.requests() == [("GET", start)]  # the second hop went direct
    assert server.connections == 2


def test_proxy_credentials_go_in_the_connect_and_never_reach_the_origin(
    tls_server: tuple[_Server, Path], forwarding_proxy
) -> None:
    server, cert = tls_server
    forwarding_proxy.credentials = "dev:s3cret"
    proxy_url = forwarding_proxy.url_with("dev", "s3cret")
    transport = _through(proxy_url, context=ssl.create_default_context(cafile=str(cert)))
    with HttpClient(base_url=server.url, transport=transport, auth=lambda _url: "Bearer mfd_device") as client:
        assert _fetch(client, "/a") == (200, b"hello 1")
    transport.close()
    (connect,) = forwarding_proxy.seen
    assert connect.headers["Proxy-Authorization"] == _basic("dev:s3cret")
    assert connect.headers["Host"] == f"127.0.0.1:{_port(server)}"
    assert "Authorization" not in connect.headers
    assert "Proxy-Authorization" not in server.seen[0]
    assert server.seen[0]["Authorization"] == "Bearer mfd_device"


def test_proxy_credentials_go_with_each_absolute_form_request(server: _Server, forwarding_proxy) -> None:
    forwarding_proxy.credentials = "dev:p@ss/word"  # percent-encoded in the URL, sent decoded
    transport = _through(forwarding_proxy.url_with("dev", quote("p@ss/word", safe="")))
    with HttpClient(base_url=server.url, transport=transport) as client:
        assert _fetch(client, "/a") == (200, b"hello 1")
        assert _fetch(client, "/a") == (200, b"hello 1")  # the proxy opens an upstream connection per request
    transport.close()
    assert [seen.headers["Proxy-Authorization"] for seen in forwarding_proxy.seen] == [_basic("dev:p@ss/word")] * 2
    assert all("Proxy-Authorization" not in seen for seen in server.seen)


WRONG_CREDENTIALS = "407 Proxy Authentication Required (it refused the credentials of user 'dev')"
NO_CREDENTIALS = "407 Proxy Authentication Required (it wants credentials: give user:password in the proxy URL)"
# how the proxy refuses -> (scheme, proxy knobs, how the message ends, code: proxy_auth when it wants credentials)
REFUSALS = {
    "wrong credentials, tunnel": ("https", {"credentials": "dev:right"}, WRONG_CREDENTIALS, "proxy_auth"),
    "no credentials, tunnel": ("https", {"credentials": "dev:right", "user": None}, NO_CREDENTIALS, "proxy_auth"),
    "forbidden target, tunnel": ("https", {"refuse": 403}, "403 Forbidden", "proxy"),
    "unreachable origin, tunnel": ("https", {"refuse": 502}, "502 Bad Gateway", "proxy"),
    "wrong credentials, absolute form": ("http", {"credentials": "dev:right"}, WRONG_CREDENTIALS, "proxy_auth"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_proxy_refusal_is_a_proxy_error_naming_the_proxy_and_status_but_no_password(
    case: str, request: pytest.FixtureRequest, forwarding_proxy
) -> None:
    scheme, knobs, status, code = REFUSALS[case]
    origin, _cert = _origin(request, scheme)
    forwarding_proxy.credentials = knobs.get("credentials")
    forwarding_proxy.refuse = knobs.get("refuse")
    proxy_url = forwarding_proxy.url_with("dev", "hunter2") if knobs.get("user", "dev") else forwarding_proxy.url
    with (
        HttpClient(base_url=origin.url, transport=_through(proxy_url)) as client,
        pytest.raises(ExchangeError) as failed,
    ):
        client.request("GET", "/a")
    reported = http_failure(f"{origin.url}/a", failed.value)
    assert (failed.value.code, reported.code) == (code, code)
    assert f"proxy {forwarding_proxy.url} refused" in failed.value.message
    assert failed.value.message.endswith(status)
    assert f"127.0.0.1:{_port(origin)}" in failed.value.message
    assert all("hunter2" not in text for text in (str(failed.value), repr(failed.value), str(reported)))
    assert origin.seen == []


def test_an_unreachable_proxy_is_a_connection_failure_without_its_password() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    transport = _through(f"http://dev:hunter2@127.0.0.1:{port}")
    with HttpClient(transport=transport) as client, pytest.raises(ExchangeError) as failed:
        client.request("GET", "https://fleet.test/a")
    assert failed.value.code == "connection"
    assert failed.value.message.startswith(f"cannot connect to fleet.test:443 through proxy http://127.0.0.1:{port}: ")
    assert "hunter2" not in str(failed.value)
    assert "hunter2" not in repr(ProxyServer.from_url(f"http://dev:hunter2@127.0.0.1:{port}"))


# Which requests a NO_PROXY list sends direct: (NO_PROXY entries, URL, through the proxy?).
ROUTES = {
    "no list": ((), "https://fleet.example.com/x", True),
    "loopback is proxied unless listed": ((), "http://127.0.0.1:8080/x", True),
    "localhost is proxied unless listed": (("127.0.0.1",), "http://localhost/x", True),
    "star": (("*",), "https://fleet.example.com/x", False),
    "star among others": (("intranet", "*"), "https://fleet.example.com/x", False),
    "exact name": (("fleet.example.com",), "https://fleet.example.com/x", False),
    "name covers subdomains": (("example.com",), "https://fleet.example.com/x", False),
    "name covers itself": (("example.com",), "https://example.com/x", False),
    "leading dot covers subdomains": ((".example.com",), "https://fleet.example.com/x", False),
    "leading dot covers the domain": ((".example.com",), "https://example.com/x", False),
    "star dot covers subdomains": (("*.example.com",), "https://fleet.example.com/x", False),
    "suffix is not a label": (("example.com",), "https://notexample.com/x", True),
    "other domain": (("example.org",), "https://fleet.example.com/x", True),
    "trailing dot in the URL": (("example.com",), "https://fleet.example.com./x", False),
    "name with the port": (("fleet.example.com:8443",), "https://fleet.example.com:8443/x", False),
    "name with another port": (("fleet.example.com:8443",), "https://fleet.example.com/x", True),
    "default port written": (("fleet.example.com:443",), "https://fleet.example.com/x", False),
    "bad port matches nothing": (("fleet.example.com:https",), "https://fleet.example.com/x", True),
    "ipv4 address": (("10.1.2.3",), "http://10.1.2.3:8080/x", False),
    "ipv4 address with port": (("10.1.2.3:8080",), "http://10.1.2.3:8080/x", False),
    "ipv4 network": (("10.0.0.0/8",), "http://10.1.2.3/x", False),
    "outside the network": (("10.0.0.0/8",), "http://11.1.2.3/x", True),
    "names are not resolved": (("127.0.0.0/8",), "http://localhost/x", True),
    "ipv6 address": (("::1",), "http://[::1]:8080/x", False),
    "ipv6 in brackets with port": (("[::1]:8080",), "http://[::1]:8080/x", False),
    "ipv6 network": (("fd00::/8",), "http://[fd12::5]/x", False),
    "ipv6 entry and an ipv4 host": (("::1",), "http://127.0.0.1/x", True),
}


@pytest.mark.parametrize("case", sorted(ROUTES))
def test_no_proxy_decides_which_requests_go_direct(case: str) -> None:
    entries, url, proxied = ROUTES[case]
    server = ProxyServer("proxy.internal", 3128)
    routes = ProxyRoutes(ProxySettings(http=server, https=server, no_proxy=entries))
    assert routes.proxy_for(*origin_of(url)) == (server if proxied else None)


def test_a_scheme_without_a_proxy_goes_direct() -> None:
    routes = ProxyRoutes(ProxySettings(https=ProxyServer("proxy.internal", 3128)))
    assert routes.proxy_for(*origin_of("http://fleet.example.com/x")) is None
    assert routes.proxy_for(*origin_of("https://fleet.example.com/x")) == ProxyServer("proxy.internal", 3128)
