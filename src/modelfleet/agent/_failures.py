"""Third-party and OS failures wrapped at the agent's boundary, with the stable codes events report.

The client, the downloader and the installer all meet the same two kinds of foreign
failure: httpx's exception tree (a network that failed, which retrying may fix) and
``OSError`` from the disk. They map them here, once, so a code such as
``connect_timeout`` or ``no_space`` means the same thing in every event and log.
"""

from __future__ import annotations

import errno

import httpx

from modelfleet.errors import TransportError

__all__ = ["disk_failure", "http_failure"]


def http_failure(where: str, error: httpx.HTTPError, *, timeout_code: str = "timeout") -> TransportError:
    """An httpx failure as a :class:`TransportError`.

    Codes: ``connect_timeout`` (no connection within the bound), ``timeout_code`` for any
    other timeout (the downloader calls a silent peer ``stalled``), ``connection`` for the
    rest (refused, reset, a body cut short, a protocol error).
    """
    if isinstance(error, httpx.ConnectTimeout):
        return TransportError(f"{where}: connect timeout: {error}", code="connect_timeout")
    if isinstance(error, httpx.TimeoutException):
        return TransportError(f"{where}: {timeout_code.replace('_', ' ')}: {error}", code=timeout_code)
    return TransportError(f"{where}: connection failed: {error or type(error).__name__}", code="connection")


def disk_failure(error: OSError) -> tuple[str, str]:
    """An ``OSError`` from the disk as ``(message, code)``; the code is ``no_space`` or ``os_error``."""
    code = "no_space" if error.errno == errno.ENOSPC else "os_error"
    return f"{error.strerror or error} ({error.filename or 'disk'})", code
