"""Which proxy a request goes through: ``NO_PROXY`` over :class:`~modelfleet.config.ProxySettings` (ADR 0011).

Matching follows curl: ``*`` sends every request direct; a name covers itself and
its subdomains (a leading ``.`` or ``*.`` changes nothing); an IP address or CIDR
network covers addresses written as such in URLs (names are not resolved to check
them); ``:port`` narrows an entry to one port, as httpx does. Loopback goes through
the proxy unless listed, as with curl and httpx. An entry that can match nothing
(``host:abc``) is ignored.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass

from modelfleet.config import ProxyServer, ProxySettings

__all__ = ["ProxyRoutes", "proxy_authorization"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Bypass:
    """One ``NO_PROXY`` entry: a host name (with its subdomains) or an IP network, on one port or all."""

    name: str
    network: _Network | None
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            address = _address(host)
            return address is not None and address in self.network
        return host == self.name or host.endswith(f".{self.name}")


class ProxyRoutes:
    """The proxy a request to an origin goes through, or ``None`` when it goes direct."""

    def __init__(self, settings: ProxySettings) -> None:
        self._servers = {"http": settings.http, "https": settings.https}
        self._all_direct = "*" in settings.no_proxy
        self._bypass = tuple(rule for entry in settings.no_proxy if (rule := _parse(entry)) is not None)

    def proxy_for(self, scheme: str, host: str, port: int) -> ProxyServer | None:
        """The proxy for ``scheme://host:port`` (``host`` in lower case, as :func:`urllib.parse.urlsplit` gives it)."""
        server = self._servers.get(scheme)
        if server is None or self._all_direct:
            return None
        host = host.rstrip(".")
        if any(rule.matches(host, port) for rule in self._bypass):
            return None
        return server


def proxy_authorization(server: ProxyServer) -> str | None:
    """``Basic <user:password>`` for a proxy URL with credentials, else ``None``."""
    if server.username is None:
        return None
    pair = f"{server.username}:{server.password or ''}".encode()
    return f"Basic {base64.b64encode(pair).decode('ascii')}"


def _parse(entry: str) -> _Bypass | None:
    split = _split_port(entry)
    if split is None:
        return None
    host, port = split
    try:
        network: _Network | None = ipaddress.ip_network(host, strict=False)
    except ValueError:
        network = None
    name = host.lstrip("*").lstrip(".").rstrip(".")
    if network is None and not name:
        return None
    return _Bypass(name, network, port)


def _split_port(entry: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address; ``None`` if bad."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
    elif entry.count(":") == 1:
        host, colon, port = entry.partition(":")
        rest = colon + port
    else:
        return entry, None
    if not rest:
        return host, None
    digits = rest[1:]
    if rest[0] != ":" or not (digits.isascii() and digits.isdigit()):
        return None
    return host, int(digits)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
