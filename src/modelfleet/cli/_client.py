"""A small synchronous client of the admin API (ADR 0003), used by the CLI commands.

Every failure leaves it as a modelfleet error: a refusal (4xx) becomes the
matching :class:`~modelfleet.errors.ModelfleetError` (401, 403, 404, 409 and 413
have their own classes) carrying the server's own code and message
(``{"error", "message", "field"}``); a server failure (5xx), a dropped
connection or a timeout becomes a :class:`~modelfleet.errors.TransportError`
naming the URL, because trying again later may help.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from modelfleet import __version__
from modelfleet._closing import Closeable
from modelfleet.errors import (
    AuthenticationError,
    BadDataError,
    ConfigError,
    ConflictError,
    ModelfleetError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    TransportError,
)

__all__ = ["AdminClient"]

_ADMIN_PREFIX = "/v1/admin"
_CHUNK = 256 * 1024
_SERVER_ERROR = 500
_BY_STATUS: dict[int, type[ModelfleetError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
}


def _refusal(response: httpx.Response) -> ModelfleetError:
    """The modelfleet error that an error answer stands for."""
    where = f"{response.request.method} {response.request.url}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        code = str(body.get("error") or f"http_{response.status_code}")
        message = str(body["message"])
        field = body.get("field")
        if field and str(field) not in message:
            message = f"{message} (field {field})"
    else:
        code = f"http_{response.status_code}"
        message = f"{where} answered HTTP {response.status_code} {response.reason_phrase}"
    if response.status_code >= _SERVER_ERROR:
        return TransportError(f"server failed on {where}: {message}", code=code)
    return _BY_STATUS.get(response.status_code, ModelfleetError)(message, code=code)


class AdminClient(Closeable):
    """Admin API calls with one bearer token.

    Args:
        server: base URL of the server, e.g. ``http://127.0.0.1:8080``.
        token: an admin token (``modelfleet server init`` prints the first one).
        timeout: seconds to wait for connect, each read and each write.
        transport: an httpx transport to use instead of the network.
    """

    def __init__(
        self, server: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        if not server.startswith(("http://", "https://")):
            msg = f"server URL must start with http:// or https://, got {server!r}"
            raise ConfigError(msg, code="bad_option")
        self.server = server.rstrip("/")
        # trust_env=False: settings come from modelfleet.config only, never from proxy variables.
        self._http = httpx.Client(
            base_url=self.server + _ADMIN_PREFIX,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"modelfleet-cli/{__version__}"},
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN401 - JSON
        """GET ``/v1/admin{path}`` and return the decoded JSON."""
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:  # noqa: ANN401 - JSON
        """POST a JSON body and return the decoded JSON answer."""
        return self._call("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: dict[str, Any]) -> Any:  # noqa: ANN401 - JSON
        """PUT a JSON body and return the decoded JSON answer."""
        return self._call("PUT", path, json=body)

    def delete(self, path: str) -> Any:  # noqa: ANN401 - JSON
        """DELETE and return the decoded JSON answer (``None`` for 204)."""
        return self._call("DELETE", path)

    def upload_bundle(self, bundle: Path, progress: Callable[[int, int], None]) -> tuple[dict[str, Any], bool]:
        """Stream a ``.mfb`` to ``POST /bundles`` without holding it in memory.

        ``progress(sent, total)`` is called after every chunk.

        Returns:
            The stored version, and whether it is new (``False``: the same bytes were already stored).
        """
        try:
            total = bundle.stat().st_size
        except OSError as exc:
            msg = f"cannot read {bundle}: {exc.strerror}"
            raise ConfigError(msg, code="bad_input_file") from None

        def chunks() -> Iterator[bytes]:
            sent = 0
            progress(0, total)
            with bundle.open("rb") as stream:
                while chunk := stream.read(_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    progress(sent, total)

        # An explicit length keeps the body un-chunked, so the server can refuse an oversized upload up front.
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(total)}
        response = self._send("POST", "/bundles", content=chunks(), headers=headers)
        stored = self._decode(response)
        if not isinstance(stored, dict):
            msg = f"POST {response.request.url} answered JSON that is not an object"
            raise BadDataError(msg, code="bad_answer")
        return stored, response.status_code == httpx.codes.CREATED

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:  # noqa: ANN401 - JSON
        return self._decode(self._send(method, path, **kwargs))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:  # noqa: ANN401 - httpx options
        url = f"{self.server}{_ADMIN_PREFIX}{path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            msg = f"{method} {url} timed out"
            raise TransportError(msg, code="timeout") from None
        except httpx.TransportError as exc:
            msg = f"cannot reach the server at {url}: {exc or type(exc).__name__}"
            raise TransportError(msg, code="unreachable") from None
        if response.is_error:
            raise _refusal(response)
        return response

    @staticmethod
    def _decode(response: httpx.Response) -> Any:  # noqa: ANN401 - JSON
        if response.status_code == httpx.codes.NO_CONTENT or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            msg = f"{response.request.method} {response.request.url} answered something that is not JSON"
            raise BadDataError(msg, code="bad_answer") from None
