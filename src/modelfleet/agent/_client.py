"""``DeviceClient``: the agent's side of the device API (ADR 0003) over the agent's own HTTP client (ADR 0011).

Every failure becomes a :class:`~modelfleet.errors.ModelfleetError` the loop can
act on: :class:`CredentialRejectedError` (401 on a device route: revoked or
rotated, enroll again or stop), :class:`ClockSkewError` (the enrollment's
``issued_at`` is too far from the server's clock, which the ``Date`` header
tells), :class:`~modelfleet.errors.TransportError` (network, 5xx, 429, garbled
answers: retry later with backoff), and the refusals that retrying will not fix
(403, 409, 4xx: ``PermissionDeniedError``, ``ConflictError``, ``BadDataError``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from modelfleet._closing import Closeable
from modelfleet.agent._failures import http_failure
from modelfleet.agent._http import ClientTimeouts, ExchangeError, HttpClient, ServerAuth, Transport
from modelfleet.errors import (
    AuthenticationError,
    BadDataError,
    ConflictError,
    ModelfleetError,
    PermissionDeniedError,
    TransportError,
)
from modelfleet.protocol import (
    CheckinRequest,
    CheckinResponse,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    IngestResult,
    TelemetryBatch,
)

__all__ = ["ClientTimeouts", "ClockSkewError", "CredentialRejectedError", "DeviceClient", "ServerAuth"]

MAX_REPLY_BYTES = 16 * 1024 * 1024
"""The largest device-API answer read; a longer one is a ``bad_response``."""

_Model = TypeVar("_Model", bound=BaseModel)
_HTTP_UNAUTHORIZED = 401
_HTTP_FORBIDDEN = 403
_HTTP_CONFLICT = 409
_HTTP_TOO_MANY = 429
_HTTP_NOT_MODIFIED = 304
_HTTP_ACCEPTED = 202
_HTTP_SERVER_ERROR = 500


class CredentialRejectedError(AuthenticationError):
    """The server no longer accepts this device's credential (revoked, or rotated elsewhere)."""

    default_code = "credential_rejected"


class ClockSkewError(AuthenticationError):
    """The enrollment's ``issued_at`` was too far from the server's clock.

    Attributes:
        server_time: the server's time from its ``Date`` header, when it sent one.
    """

    default_code = "clock_skew"

    def __init__(self, message: str, *, server_time: datetime | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.server_time = server_time


@dataclass(frozen=True, slots=True)
class _Reply:
    """A device-API answer, read whole."""

    url: str
    status_code: int
    headers: Mapping[str, str]
    content: bytes


class DeviceClient(Closeable):
    """Calls the device API of one server.

    Args:
        base_url: the server, e.g. ``https://fleet.example.com``.
        credential: the bearer credential, when the device has one.
        timeouts: per-request bounds.
        transport: where requests go (a pooled :class:`~modelfleet.agent.HttpTransport` by default;
            the simulator shares one, tests answer from a :class:`~modelfleet.agent.MockTransport`).
        max_reply_bytes: the largest answer read.
    """

    def __init__(
        self,
        base_url: str,
        *,
        credential: str | None = None,
        timeouts: ClientTimeouts | None = None,
        transport: Transport | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.last_etag: str | None = None
        self._max_reply = max_reply_bytes
        self._http = HttpClient(
            base_url=self.base_url,
            transport=transport,
            auth=self.auth(),
            headers={"User-Agent": "modelfleet-agent"},
            timeouts=timeouts,
        )

    def auth(self) -> ServerAuth:
        """The ``Authorization`` this client's current credential gives, for this server's origin only."""
        return ServerAuth(self.base_url, lambda: self.credential)

    def downloads(self) -> HttpClient:
        """A client for bundle downloads on this client's connections, with its credential (close it before this)."""
        return HttpClient(transport=self._http.transport, auth=self.auth(), headers={"User-Agent": "modelfleet-agent"})

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ------------------------------------------------------------ routes

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """Enroll; an accepted answer's credential is kept in :attr:`credential` (a pending one has none).

        Raises:
            ClockSkewError: ``issued_at`` is too far off; ``server_time`` says what time the server has.
            AuthenticationError: the proof did not verify.
            PermissionDeniedError: the device is revoked, or the token expired or is used up.
            ConflictError: the device id is bound to another key.
            TransportError: the server could not be reached or failed.
        """
        reply = self._post("/v1/devices/enroll", request.model_dump_json(), device_route=False, idempotent=False)
        answer = _parse(EnrollResponse, reply)
        if reply.status_code != _HTTP_ACCEPTED and answer.status == "accepted" and answer.credential:
            self.credential = answer.credential
        return answer

    def checkin(self, request: CheckinRequest, etag: str | None = None) -> CheckinResponse | None:
        """Check in; ``None`` when the desired state is still the one ``etag`` names (304).

        The answer's ETag is left in :attr:`last_etag` (kept from ``etag`` on a 304).

        Raises:
            CredentialRejectedError: the credential is no longer valid.
            TransportError: the server could not be reached or failed.
        """
        headers = {"If-None-Match": etag} if etag else {}
        reply = self._post("/v1/devices/checkin", request.model_dump_json(), headers=headers)
        self.last_etag = reply.headers.get("etag", etag)
        if reply.status_code == _HTTP_NOT_MODIFIED:
            return None
        return _parse(CheckinResponse, reply)

    def send_telemetry(self, batch: TelemetryBatch) -> IngestResult:
        """Send window summaries; each id is stored once by the server, so resending is safe."""
        return _parse(IngestResult, self._post("/v1/telemetry", batch.model_dump_json()))

    def send_events(self, batch: EventBatch) -> IngestResult:
        """Send events; each id is stored once by the server, so resending is safe."""
        return _parse(IngestResult, self._post("/v1/events", batch.model_dump_json()))

    # ------------------------------------------------------------ plumbing

    def _post(
        self,
        path: str,
        body: str,
        *,
        headers: dict[str, str] | None = None,
        device_route: bool = True,
        idempotent: bool = True,
    ) -> _Reply:
        """POST ``body``; check-in, telemetry and events are idempotent (ids), so a stale connection is retried."""
        if device_route and self.credential is None:
            msg = f"{path} needs a device credential; enroll first"
            raise CredentialRejectedError(msg, code="no_credential")
        where = f"{self.base_url}{path}"
        try:
            sent = {"Content-Type": "application/json", **(headers or {})}
            with self._http.request("POST", path, body=body.encode(), headers=sent, idempotent=idempotent) as answer:
                reply = _Reply(answer.url, answer.status_code, answer.headers, answer.read(self._max_reply))
        except ExchangeError as exc:
            raise http_failure(where, exc) from None
        if reply.status_code < 400:  # noqa: PLR2004 - HTTP status classes
            return reply
        raise _refusal(where, reply, device_route=device_route)


def _parse(model: type[_Model], reply: _Reply) -> _Model:
    try:
        return model.model_validate_json(reply.content)
    except ValidationError as exc:
        msg = f"{reply.url}: the server's answer is not a {model.__name__}: {exc.errors()[0]['msg']}"
        raise TransportError(msg, code="bad_response") from None


def _error_fields(reply: _Reply) -> tuple[str, str]:
    try:
        body = json.loads(reply.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return str(body.get("error") or f"http_{reply.status_code}"), str(body.get("message") or "")
    return f"http_{reply.status_code}", reply.content[:200].decode(errors="replace")


def _server_time(reply: _Reply) -> datetime | None:
    date = reply.headers.get("date")
    if not date:
        return None
    try:
        return parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None


def _refusal(where: str, reply: _Reply, *, device_route: bool) -> ModelfleetError:  # noqa: PLR0911 - one answer per status class
    status = reply.status_code
    code, message = _error_fields(reply)
    text = f"{where}: {status} {message}".rstrip()
    if status >= _HTTP_SERVER_ERROR or status == _HTTP_TOO_MANY:
        return TransportError(text, code=f"http_{status}")
    if status == _HTTP_UNAUTHORIZED:
        if code == "clock_skew":
            return ClockSkewError(text, server_time=_server_time(reply))
        if device_route:
            return CredentialRejectedError(text)
        return AuthenticationError(text, code=code)
    if status == _HTTP_FORBIDDEN:
        return PermissionDeniedError(text, code=code)
    if status == _HTTP_CONFLICT:
        return ConflictError(text, code=code)
    return BadDataError(text, code=code)
