"""The agent's HTTP/1.1 client on the standard library's ``http.client`` (ADR 0011).

A device agent makes a handful of request shapes: small JSON posts to one server
and streamed, ranged downloads of bundles. httpx did both but, with httpcore, its
CLI (rich, click, pygments) and certifi's CA store, held about 13 MB of the idle
agent's memory; this module is what the agent needs and no more:

* :class:`HttpTransport` sends one request over a kept-alive connection per origin
  (thread-safe; idle connections are dropped when the peer closed them or after
  ``idle_s``). A reused connection that fails before any answer is retried once on
  a fresh one when the request is idempotent. With :class:`~modelfleet.config.ProxySettings`
  it goes through an HTTP proxy unless ``NO_PROXY`` names the host: ``https`` in a
  CONNECT tunnel (TLS checks the origin's name), ``http`` as absolute-form requests.
* :class:`HttpClient` resolves paths against a base URL, adds default headers and
  the credential (only for the server's origin), and follows redirects.
* :class:`MockTransport` answers from a function, for tests and the simulator.

Failures below HTTP raise :class:`ExchangeError` (a
:class:`~modelfleet.errors.TransportError`) with one of the codes below;
:func:`modelfleet.agent._failures.http_failure` names the request in the message
and lets the downloader call a read timeout ``stalled``. Statuses are not errors
here: the caller decides what a 4xx or 5xx means.
"""

from __future__ import annotations

import http.client
import io
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from modelfleet._closing import Closeable
from modelfleet.agent._proxy import ProxyRoutes, proxy_authorization
from modelfleet.config import ProxyServer, ProxySettings
from modelfleet.errors import TransportError

__all__ = [
    "CONNECTION",
    "CONNECT_TIMEOUT",
    "PROXY",
    "PROXY_AUTH",
    "READ_TIMEOUT",
    "TOO_LARGE",
    "ClientTimeouts",
    "ExchangeError",
    "HttpClient",
    "HttpTransport",
    "MockTransport",
    "Request",
    "Response",
    "ServerAuth",
    "Transport",
]

CONNECT_TIMEOUT = "connect_timeout"
"""No connection within the connect bound."""
READ_TIMEOUT = "read_timeout"
"""The peer stayed silent longer than the read bound."""
CONNECTION = "connection"
"""No connection (refused, unknown host, TLS handshake), or an exchange cut short or garbled."""
TOO_LARGE = "too_large"
"""A body read whole was longer than the caller's bound."""
PROXY = "proxy"
"""The proxy refused the tunnel with a status other than 407 (a 502 when it cannot reach the origin)."""
PROXY_AUTH = "proxy_auth"
"""The proxy asked for credentials (407): the configured ones are missing or wrong, which no retry changes."""


class ExchangeError(TransportError):
    """An HTTP exchange failed below HTTP (code: one of this module's constants)."""

    default_code = CONNECTION


_CHUNK = 64 * 1024
_DRAIN_LIMIT = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

_PROXY_AUTHENTICATION_REQUIRED = 407
_TUNNEL_REFUSED = "Tunnel connection failed: "  # how http.client reports a CONNECT answered other than 200

Origin = tuple[str, str, int]
"""(scheme, host, port) of a URL: where a connection goes, and whom a credential is for."""
Route = tuple[Origin, ProxyServer | None]
"""An origin and the proxy on the way, if any: connections are pooled per route, never mixed."""


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """Bounds of one request: opening the connection, and the longest silence while sending or receiving."""

    connect_s: float = 10.0
    read_s: float = 30.0


def origin_of(url: str) -> Origin:
    """The origin of an absolute ``http``/``https`` URL.

    Raises:
        ExchangeError: another scheme, or no host (``connection``).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        msg = f"cannot fetch {url!r}: only absolute http and https URLs are supported"
        raise ExchangeError(msg, code=CONNECTION)
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        msg = f"cannot fetch {url!r}: {exc}"
        raise ExchangeError(msg, code=CONNECTION) from None
    return scheme, parts.hostname.lower(), port


@dataclass(frozen=True, slots=True)
class Request:
    """One request as a transport sends it (absolute URL, final headers)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)
    idempotent: bool = True


class _Body(Protocol):
    def read1(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Response(Closeable):
    """A status, headers (names in lower case) and a body read on demand.

    Close it, or use it as a context manager, so its connection goes back to the pool.
    """

    def __init__(self, status_code: int, headers: Mapping[str, str], url: str, body: _Body) -> None:
        self.status_code = status_code
        self.headers = {name.lower(): value for name, value in headers.items()}
        self.url = url
        self._body = body

    @classmethod
    def of(cls, status_code: int, content: bytes = b"", headers: Mapping[str, str] | None = None) -> Response:
        """A complete response from bytes (what a :class:`MockTransport` handler returns)."""
        return cls(status_code, {"content-length": str(len(content)), **(headers or {})}, "", io.BytesIO(content))

    def header(self, name: str) -> str | None:
        """One header's value (case-insensitive), or ``None``."""
        return self.headers.get(name.lower())

    def iter_bytes(self, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The body as it arrives, in chunks of at most ``chunk_size`` bytes."""
        while chunk := self._body.read1(chunk_size):
            yield chunk

    def read(self, max_bytes: int) -> bytes:
        """The whole body.

        Raises:
            ExchangeError: it is longer than ``max_bytes`` (``too_large``), or the exchange failed.
        """
        data = bytearray()
        for chunk in self.iter_bytes():
            data += chunk
            if len(data) > max_bytes:
                self.close()
                msg = f"the answer is longer than {max_bytes} bytes"
                raise ExchangeError(msg, code=TOO_LARGE)
        return bytes(data)

    def close(self) -> None:
        """Release the connection (kept alive when the body was read to its end)."""
        self._body.close()


class Transport:
    """Sends one request and returns its response, whatever the status; raises :class:`ExchangeError`."""

    def send(self, request: Request) -> Response:
        """Send ``request``; the caller closes the response."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class MockTransport(Transport):
    """Answers every request from ``handler`` (tests, simulated links); records nothing itself."""

    def __init__(self, handler: Callable[[Request], Response]) -> None:
        self._handler = handler

    def send(self, request: Request) -> Response:
        """The handler's response, with the request's URL."""
        response = self._handler(request)
        response.url = request.url
        return response


class _Wire:
    """A response body read from a pooled connection; gives the connection back once the body is done."""

    def __init__(self, raw: http.client.HTTPResponse, release: Callable[[bool], None]) -> None:
        self._raw = raw
        self._release: Callable[[bool], None] | None = release

    def read1(self, size: int = -1, /) -> bytes:
        if self._release is None:
            return b""
        expected = self._raw.length
        try:
            chunk = self._raw.read1(size)
        except (OSError, http.client.HTTPException) as exc:
            self._finish(reusable=False)
            raise _exchange_failure(exc) from None
        if not chunk and size and expected:  # read1 ends quietly where read() raises IncompleteRead
            self._finish(reusable=False)
            msg = f"the answer was cut short with {expected} of its declared bytes missing"
            raise ExchangeError(msg, code=CONNECTION)
        if self._complete():
            self._finish(reusable=True)
        return chunk

    def close(self) -> None:
        if self._release is None:
            return
        remaining = self._raw.length
        if not self._raw.chunked and remaining is not None and remaining <= _DRAIN_LIMIT:
            try:  # a short rest (a 304, an error page) is cheaper to read than a new connection
                while self.read1(_CHUNK):
                    pass
            except ExchangeError:
                return
        self._finish(reusable=self._complete())

    def _complete(self) -> bool:
        """Whether the body was read to its end (``read1`` leaves a Content-Length body open at zero left)."""
        return self._raw.isclosed() or (not self._raw.chunked and self._raw.length == 0)

    def _finish(self, *, reusable: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            self._raw.close()  # closes the response's file only; the connection keeps its socket
            release(reusable and not self._raw.will_close)


class HttpTransport(Transport):
    """HTTP/1.1 over TCP or TLS with a pool of kept-alive connections per origin; thread-safe.

    Args:
        ssl_context: TLS settings; the system's default context is made on the first
            ``https`` connection when ``None`` (loading a CA store costs memory a
            plain-HTTP agent does not need).
        proxies: the HTTP proxies and ``NO_PROXY`` list (none by default); read from the
            environment by :func:`modelfleet.config.load_proxy_settings`, never here.
        max_idle_per_origin: idle connections kept per origin.
        idle_s: an idle connection older than this is closed, not reused (servers
            close theirs after about 5 s).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxies: ProxySettings | None = None,
        max_idle_per_origin: int = 4,
        idle_s: float = 4.0,
    ) -> None:
        self._ssl = ssl_context
        self._routes = ProxyRoutes(proxies or ProxySettings())
        self._max_idle = max_idle_per_origin
        self._idle_s = idle_s
        self._idle: dict[Route, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._lock = threading.Lock()

    def send(self, request: Request) -> Response:
        """Send ``request`` on a pooled or new connection, through the proxy its host needs."""
        origin = origin_of(request.url)
        route = (origin, self._routes.proxy_for(*origin))
        target, headers = _wire_form(request, route)
        while True:
            connection, reused = self._checkout(route, request)
            try:
                raw = self._exchange(connection, request, target, headers)
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused and request.idempotent and not isinstance(exc, TimeoutError):
                    continue  # the peer closed a kept-alive connection as we reused it: try a fresh one
                raise _exchange_failure(exc) from None
            if route[1] is not None and origin[0] == "http" and raw.status == _PROXY_AUTHENTICATION_REQUIRED:
                connection.close()  # the proxy's own answer: a tunnelled 407 would be the origin's
                raise _proxy_refusal(route[1], f"the request to {_authority(origin)}", f"{raw.status} {raw.reason}")
            received = {name.lower(): value for name, value in raw.getheaders()}
            return Response(raw.status, received, request.url, _Wire(raw, self._releaser(route, connection)))

    def close(self) -> None:
        """Close every idle connection (connections lent out close when their responses do)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for pool in idle.values():
            for _since, connection in pool:
                connection.close()

    def _exchange(
        self, connection: http.client.HTTPConnection, request: Request, target: str, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        if connection.sock is not None:
            connection.sock.settimeout(request.timeouts.read_s)
        connection.request(request.method, target, body=request.body or None, headers=headers)
        return connection.getresponse()

    def _checkout(self, route: Route, request: Request) -> tuple[http.client.HTTPConnection, bool]:
        """An idle live connection on ``route``, else a new one; whether it was reused."""
        now = time.monotonic()
        while True:
            with self._lock:
                pool = self._idle.get(route)
                since, connection = pool.pop() if pool else (0.0, None)
            if connection is None:
                return self._connect(route, request), False
            if now - since <= self._idle_s and _still_open(connection):
                return connection, True
            connection.close()

    def _connect(self, route: Route, request: Request) -> http.client.HTTPConnection:
        (scheme, host, port), proxy = route
        bound = request.timeouts.connect_s
        peer = (host, port) if proxy is None else (proxy.host, proxy.port)
        connection: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            connection = http.client.HTTPSConnection(*peer, timeout=bound, context=self._ssl)
            if proxy is not None:  # TLS then checks the origin's name, not the proxy's
                connection.set_tunnel(host, port, headers=_tunnel_headers(route))
        else:
            connection = http.client.HTTPConnection(*peer, timeout=bound)
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _connect_failure(exc, route, bound) from None
        return connection

    def _releaser(self, route: Route, connection: http.client.HTTPConnection) -> Callable[[bool], None]:
        def release(reusable: bool) -> None:
            if not reusable or connection.sock is None:
                connection.close()
                return
            with self._lock:
                pool = self._idle.setdefault(route, [])
                if len(pool) < self._max_idle:
                    pool.append((time.monotonic(), connection))
                    return
            connection.close()

        return release


def _authority(origin: Origin) -> str:
    """``host:port`` of an origin, an IPv6 address in brackets."""
    _scheme, host, port = origin
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wire_form(request: Request, route: Route) -> tuple[str, dict[str, str]]:
    """The request target and headers as sent: absolute-form with ``Proxy-Authorization`` to a plain-HTTP proxy.

    A tunnelled request is origin-form like a direct one; its proxy credentials go only in the CONNECT.
    """
    parts = urlsplit(request.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = dict(request.headers)
    (scheme, _host, _port), proxy = route
    if proxy is None or scheme != "http":
        return target, headers
    authorization = proxy_authorization(proxy)
    if authorization is not None:
        headers["Proxy-Authorization"] = authorization
    return f"http://{parts.netloc.rpartition('@')[2]}{target}", headers


def _tunnel_headers(route: Route) -> dict[str, str]:
    """The CONNECT's headers: ``Host`` and the proxy's credentials, never the origin's."""
    origin, proxy = route
    headers = {"Host": _authority(origin)}  # later Pythons add it unless given; 3.11 sends none
    authorization = proxy_authorization(proxy) if proxy is not None else None
    if authorization is not None:
        headers["Proxy-Authorization"] = authorization
    return headers


def _connect_failure(error: BaseException, route: Route, bound: float) -> ExchangeError:
    """Why a connection could not be opened, naming the origin and the proxy (never its credentials)."""
    origin, proxy = route
    where = _authority(origin) + (f" through proxy {proxy.url}" if proxy is not None else "")
    if isinstance(error, TimeoutError):
        return ExchangeError(f"no connection to {where} within {bound:g} s", code=CONNECT_TIMEOUT)
    text = str(error)
    if proxy is not None and text.startswith(_TUNNEL_REFUSED):
        return _proxy_refusal(proxy, f"the tunnel to {_authority(origin)}", text.removeprefix(_TUNNEL_REFUSED))
    if isinstance(error, ssl.SSLError):
        return ExchangeError(f"TLS handshake with {where}: {error.strerror or error}", code=CONNECTION)
    reason = (error.strerror if isinstance(error, OSError) else None) or text or type(error).__name__
    return ExchangeError(f"cannot connect to {where}: {reason}", code=CONNECTION)


def _proxy_refusal(proxy: ProxyServer, what: str, status: str) -> ExchangeError:
    """The proxy answered ``status`` (such as ``407 Proxy Authentication Required``) to ``what``.

    A 407 is ``proxy_auth`` (the credentials are missing or wrong), any other refusal ``proxy``.
    The proxy is named by its URL, never with its password.
    """
    text = f"proxy {proxy.url} refused {what}: {status}".rstrip()
    if status.partition(" ")[0] != str(_PROXY_AUTHENTICATION_REQUIRED):
        return ExchangeError(text, code=PROXY)
    if proxy.username is None:
        return ExchangeError(f"{text} (it wants credentials: give user:password in the proxy URL)", code=PROXY_AUTH)
    return ExchangeError(f"{text} (it refused the credentials of user {proxy.username!r})", code=PROXY_AUTH)


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection may be reused: the peer neither closed it nor sent anything unasked."""
    sock = connection.sock
    if sock is None:
        return False
    poller = select.poll()  # not select.select: a simulator process holds more than 1,024 descriptors
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _exchange_failure(error: BaseException) -> ExchangeError:
    if isinstance(error, TimeoutError):
        return ExchangeError("the peer was silent longer than the read bound", code=READ_TIMEOUT)
    return ExchangeError(f"the exchange was cut short: {error or type(error).__name__}", code=CONNECTION)


class ServerAuth:
    """The ``Authorization`` header for requests to the fleet server's origin only (never to a CDN).

    Args:
        base_url: the server's base URL.
        credential: returns the current credential (it may rotate), or ``None``.
    """

    def __init__(self, base_url: str, credential: Callable[[], str | None]) -> None:
        self._origin = origin_of(base_url)
        self._credential = credential

    def __call__(self, url: str) -> str | None:
        """``Bearer <credential>`` when ``url`` goes to the server and there is a credential."""
        credential = self._credential()
        if credential is None or origin_of(url) != self._origin:
            return None
        return f"Bearer {credential}"


class HttpClient(Closeable):
    """Requests with a base URL, default headers, the server's credential and redirects.

    Args:
        base_url: prefix of relative paths.
        transport: where requests go; an :class:`HttpTransport` (closed with the client) when ``None``.
        auth: the ``Authorization`` value for a URL, or ``None`` for none.
        headers: sent with every request.
        timeouts: default bounds of a request.
        max_redirects: redirects followed before giving up.
    """

    def __init__(
        self,
        *,
        base_url: str = "",
        transport: Transport | None = None,
        auth: Callable[[str], str | None] | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: ClientTimeouts | None = None,
        max_redirects: int = 5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_transport = transport is None
        self.transport = transport or HttpTransport()
        self._auth = auth
        self._headers = dict(headers or {})
        self._timeouts = timeouts or ClientTimeouts()
        self._max_redirects = max_redirects

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeouts: ClientTimeouts | None = None,
        idempotent: bool | None = None,
    ) -> Response:
        """Send a request and follow redirects; the caller closes the response.

        Raises:
            ExchangeError: no connection, a timeout, a failed exchange or too many redirects.
        """
        current = Request(
            method.upper(),
            self._absolute(url),
            {**self._headers, **(headers or {})},
            body,
            timeouts or self._timeouts,
            method.upper() in _IDEMPOTENT if idempotent is None else idempotent,
        )
        for _ in range(self._max_redirects + 1):
            response = self.transport.send(self._authorized(current))
            location = response.header("location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            response.close()
            current = _redirected(current, response.status_code, urljoin(current.url, location))
        msg = f"more than {self._max_redirects} redirects"
        raise ExchangeError(msg, code=CONNECTION)

    def close(self) -> None:
        """Close the transport if this client made it."""
        if self._own_transport:
            self.transport.close()

    def _absolute(self, url: str) -> str:
        return f"{self.base_url}{url}" if url.startswith("/") else url

    def _authorized(self, request: Request) -> Request:
        headers = {name: value for name, value in request.headers.items() if name.lower() != "authorization"}
        authorization = self._auth(request.url) if self._auth is not None else None
        if authorization is not None:
            headers["Authorization"] = authorization
        return replace(request, headers=headers)


def _redirected(request: Request, status: int, url: str) -> Request:
    """The request a redirect asks for: a GET without body after 303 (and after 301/302 of a POST)."""
    if status == 303 or (status in {301, 302} and request.method == "POST"):  # noqa: PLR2004 - HTTP statuses
        headers = {name: value for name, value in request.headers.items() if name.lower() != "content-type"}
        return replace(request, method="GET", url=url, headers=headers, body=b"", idempotent=True)
    return replace(request, url=url)
