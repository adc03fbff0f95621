"""Typed settings, and the only module that reads environment variables.

Every bound on input from outside (sizes, counts, retries, time) lives here in a
frozen dataclass that callers pass in; nothing else looks at ``os.environ``.
:func:`load_settings` reads the ``MODELFLEET_*`` variables; :func:`load_proxy_settings`
reads the conventional proxy variables for the device agent's HTTP client (ADR 0011).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from modelfleet.errors import ConfigError

__all__ = ["BundleLimits", "ProxyServer", "ProxySettings", "Settings", "load_proxy_settings", "load_settings"]

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
ENV_PREFIX = "MODELFLEET_"


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Bounds a bundle reader enforces before it trusts anything.

    Attributes:
        max_manifest_bytes: largest ``manifest.json`` accepted.
        max_signature_bytes: largest ``manifest.sig`` accepted.
        max_signatures: most signatures in one envelope.
        max_members: most payload files in one bundle.
        max_member_bytes: largest single payload file.
        max_total_bytes: largest sum of payload sizes.
        chunk_bytes: read/hash/write unit; bounds the reader's memory.
    """

    max_manifest_bytes: int = 4 * _MIB
    max_signature_bytes: int = 64 * 1024
    max_signatures: int = 32
    max_members: int = 64
    max_member_bytes: int = 8 * _GIB
    max_total_bytes: int = 16 * _GIB
    chunk_bytes: int = 1 * _MIB

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                msg = f"bundle limit {f.name} must be a positive integer, got {value!r}"
                raise ConfigError(msg, code="bad_setting")


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings of one modelfleet process.

    Attributes:
        bundle: bounds for reading bundles.
        server: default admin/device API URL for CLI commands.
        token: default admin token for CLI commands.
        data_dir: the server's data directory (``server run`` passes it to its worker processes).
        database_url: overrides the database URL saved in the data directory.
        crash_at: test-only: the agent install step at which the process SIGKILLs itself
            (``MODELFLEET_CRASH_AT``; see ``modelfleet.agent.CrashPoint``).
    """

    bundle: BundleLimits = field(default_factory=BundleLimits)
    server: str | None = None
    token: str | None = None
    data_dir: Path | None = None
    database_url: str | None = None
    crash_at: str | None = None


def _int_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        msg = f"{ENV_PREFIX}{name} must be an integer, got {raw!r}"
        raise ConfigError(msg, code="bad_setting") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``MODELFLEET_*`` environment variables.

    Bundle limits are named ``MODELFLEET_BUNDLE_<FIELD>`` (for example
    ``MODELFLEET_BUNDLE_MAX_MEMBER_BYTES``).

    Raises:
        ConfigError: a variable is set to something unusable.
    """
    source: Mapping[str, str] = os.environ if env is None else env
    defaults = BundleLimits()
    limits: dict[str, Any] = {
        f.name: _int_from_env(source, "BUNDLE_" + f.name.upper(), getattr(defaults, f.name))
        for f in dataclasses.fields(BundleLimits)
    }
    return Settings(
        bundle=BundleLimits(**limits),
        server=source.get(ENV_PREFIX + "SERVER") or None,
        token=source.get(ENV_PREFIX + "TOKEN") or None,
        data_dir=Path(data) if (data := source.get(ENV_PREFIX + "DATA")) else None,
        database_url=source.get(ENV_PREFIX + "DATABASE_URL") or None,
        crash_at=source.get(ENV_PREFIX + "CRASH_AT") or None,
    )


@dataclass(frozen=True, slots=True)
class ProxyServer:
    """An HTTP proxy the agent sends requests through, and the credentials it asks for.

    Only ``http://`` proxies: the agent speaks plain HTTP to the proxy and TLS to an
    ``https`` origin inside a CONNECT tunnel (no TLS to the proxy, no SOCKS).

    Attributes:
        host: the proxy's host name or IP address.
        port: its port (80 when the URL names none, as httpx and requests assume; curl assumes 1080).
        username: the user of ``Proxy-Authorization: Basic``, if any.
        password: its password (never shown: not in ``repr``, :attr:`url` or any message).
    """

    host: str
    port: int = 80
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.host or not 0 < self.port < 65536:  # noqa: PLR2004 - the TCP port range
            msg = f"a proxy needs a host and a port in 1-65535, got {self.url!r}"
            raise ConfigError(msg, code="bad_setting")

    @classmethod
    def from_url(cls, url: str, *, source: str = "proxy") -> ProxyServer:
        """Parse ``[http://][user[:password]@]host[:port][/]``; a value without a scheme is an ``http://`` URL.

        Args:
            url: the proxy URL; user and password are percent-decoded.
            source: what the URL came from (a variable, an option), named in errors.

        Raises:
            ConfigError: ``bad_setting`` when the URL is not an ``http://`` proxy (its password left out).
        """
        text = url.strip()
        if "://" not in text:
            text = f"http://{text}"
        parts = urlsplit(text)
        shown = _without_credentials(text)
        if parts.scheme.lower() != "http":
            msg = f"{source}={shown!r}: only http:// proxies are supported (not https:// or SOCKS)"
            raise ConfigError(msg, code="bad_setting")
        try:
            port = 80 if parts.port is None else parts.port
        except ValueError:
            port = 0
        if not (parts.hostname and port) or parts.path not in {"", "/"} or parts.query or parts.fragment:
            msg = f"{source}={shown!r} is not a proxy URL; expected http://[user:password@]host[:port]"
            raise ConfigError(msg, code="bad_setting")
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, username, password)

    @property
    def url(self) -> str:
        """``http://host:port``: the proxy named without its credentials, for messages and logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _without_credentials(url: str) -> str:
    """``url`` with anything between its scheme and the last ``@`` dropped (a password may hold ``/`` or ``@``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Which proxies the agent's HTTP client uses (the default: none, every request goes direct).

    Attributes:
        http: the proxy for ``http://`` origins (requests in absolute form), or ``None``.
        https: the proxy for ``https://`` origins (a CONNECT tunnel; TLS checks the origin), or ``None``.
        no_proxy: hosts reached directly, lower case: ``*`` (every host), a name that also covers its
            subdomains (``example.com`` and ``.example.com`` both match ``example.com`` and
            ``a.example.com``), an IP address or CIDR network, each optionally with ``:port``.
            Loopback is proxied unless listed, as curl and httpx do.
    """

    http: ProxyServer | None = None
    https: ProxyServer | None = None
    no_proxy: tuple[str, ...] = ()


def _first_set(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``(variable, value)`` of lower-case ``name``, else of its upper-case form; an empty value is unset."""
    for variable in (name, name.upper()):
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return None


def load_proxy_settings(env: Mapping[str, str] | None = None, *, proxy: str | None = None) -> ProxySettings:
    """The agent's proxies from ``https_proxy``, ``http_proxy`` and ``no_proxy`` (or their upper-case forms).

    The lower-case variable wins over the upper-case one, as in curl (which, unlike
    this, ignores upper-case ``HTTP_PROXY``); an empty variable counts as unset.
    ``NO_PROXY`` is a list separated by commas or spaces (see :class:`ProxySettings`).
    Read apart from :func:`load_settings`: a proxy variable set for other tools (a SOCKS
    proxy, say) must not stop the server or the admin CLI, which never use it.

    Args:
        env: the variables (the process environment when ``None``).
        proxy: an explicit proxy URL (``modelfleet agent run --proxy``) for both schemes,
            replacing ``HTTPS_PROXY`` and ``HTTP_PROXY``; ``NO_PROXY`` still applies, as with curl's ``--proxy``.

    Raises:
        ConfigError: ``bad_setting`` when a proxy URL is unusable (named without its password).
    """
    source: Mapping[str, str] = os.environ if env is None else env
    explicit = ProxyServer.from_url(proxy, source="--proxy") if proxy else None
    bypass = _first_set(source, "no_proxy")
    return ProxySettings(
        http=explicit or _proxy_from(source, "http_proxy"),
        https=explicit or _proxy_from(source, "https_proxy"),
        no_proxy=tuple(bypass[1].lower().replace(",", " ").split()) if bypass else (),
    )


def _proxy_from(env: Mapping[str, str], name: str) -> ProxyServer | None:
    found = _first_set(env, name)
    return ProxyServer.from_url(found[1], source=found[0]) if found else None
