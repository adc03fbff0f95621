"""Third-party and OS failures wrapped at the agent's boundary, with the stable codes events report.

The client, the downloader and the installer all meet the same two kinds of foreign
failure: :class:`~modelfleet.agent._http.HttpFailure` (a network that failed, which retrying may fix) and
``OSError`` from the disk. They map them here, once, so a code such as
``connect_timeout`` or ``no_space`` means the same thing in every event and log.
"""

from __future__ import annotations

import errno

from modelfleet.agent._http import CONNECT_TIMEOUT, PROXY, PROXY_AUTH, READ_TIMEOUT, TOO_LARGE, ExchangeError
from modelfleet.errors import TransportError

__all__ = ["disk_failure", "http_failure"]


def http_failure(where: str, error: ExchangeError, *, timeout_code: str = "timeout") -> TransportError:
    """A failed HTTP exchange as the :class:`TransportError` events report, naming the request.

    Codes: ``connect_timeout`` (no connection within the bound), ``timeout_code`` for a
    silent peer (the downloader calls it ``stalled``), ``bad_response`` for an answer over
    its bound, ``proxy_auth`` when the proxy asked for credentials (407: missing or wrong, so
    the downloader does not retry it), ``proxy`` when it refused the tunnel otherwise (a 502 for
    an unreachable origin), ``connection`` for the rest (refused, reset, a body cut short, a
    protocol error).
    """
    if error.code == CONNECT_TIMEOUT:
        return TransportError(f"{where}: connect timeout: {error.message}", code="connect_timeout")
    if error.code == READ_TIMEOUT:
        return TransportError(f"{where}: {timeout_code.replace('_', ' ')}: {error.message}", code=timeout_code)
    if error.code == TOO_LARGE:
        return TransportError(f"{where}: {error.message}", code="bad_response")
    if error.code in {PROXY, PROXY_AUTH}:
        return TransportError(f"{where}: {error.message}", code=error.code)
    return TransportError(f"{where}: connection failed: {error.message}", code="connection")


def disk_failure(error: OSError) -> tuple[str, str]:
    """An ``OSError`` from the disk as ``(message, code)``; the code is ``no_space`` or ``os_error``."""
    code = "no_space" if error.errno == errno.ENOSPC else "os_error"
    return f"{error.strerror or error} ({error.filename or 'disk'})", code
