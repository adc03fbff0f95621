"""The server's one ASGI middleware: request metrics, URL and body bounds, and the check-in's short way in.

One pure ASGI layer instead of three: each layer costs a call frame, a
wrapped ``send`` and a scope lookup on every request, which on a 304 check-in
was about a sixth of the server's time. The check-in, which devices send
thousands of times a second, is answered here after the same bounds and with
the same error shapes, without FastAPI's routing, dependency solving and
exception middleware (it declares no dependencies; its route stays in the app
for the OpenAPI document). Every other request goes to the app.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from fastapi import Request
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelfleet.server._checkin import CHECKIN_PATH, LoopConnection, handle_checkin
from modelfleet.server._errors import error_answer
from modelfleet.server._limits import body_refusal, buffered_body, url_refusal
from modelfleet.server._state import ServerState

__all__ = ["RequestGate"]

_LABEL_CACHE_BOUND = 4096


class RequestGate:
    """Bound, time and count every HTTP request; answer check-ins directly.

    Args:
        app: the wrapped ASGI app.
        state: the server's state (metrics, body bound, what check-ins need).
        streamed: ``(method, path) -> bound`` for routes that read their body as a stream.
    """

    def __init__(self, app: ASGIApp, *, state: ServerState, streamed: Mapping[tuple[str, str], int]) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = state.config.max_body_bytes
        self.streamed = dict(streamed)
        self._instruments: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._connection = LoopConnection(state.engine)

    def _closing_at_shutdown(self, receive: Receive) -> Receive:
        """Give the check-ins' kept connection back when shutdown begins, before the app disposes of its engine."""

        async def receive_closing() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self._connection.close()
            return message

        return receive_closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request and record its route template, status and duration."""
        if scope["type"] == "lifespan":
            await self.app(scope, self._closing_at_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        checkin = scope["path"] == CHECKIN_PATH and scope["method"] == "POST"
        try:
            await self._bounded(scope, receive, send_recording, checkin=checkin)
        finally:
            route = CHECKIN_PATH if checkin else getattr(scope.get("route"), "path", "unmatched")
            requests, latency = self._instruments_for(scope["method"], route, status)
            requests.inc()
            latency.observe(time.perf_counter() - started)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, *, checkin: bool) -> None:
        """Refuse a NUL in the URL or a body over its bound; buffer a chunked body; then serve."""
        refusal = url_refusal(scope)
        if refusal is None:
            route = (scope["method"], scope["path"])
            headers = Headers(scope=scope)
            limit = self.streamed.get(route, self.max_body_bytes)
            refusal = body_refusal(headers, limit)
            if refusal is None and route not in self.streamed:
                receive, refusal = await buffered_body(headers, receive, limit)
        if refusal is not None:
            await refusal(scope, receive, send)
        elif checkin:
            await self._checkin(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _checkin(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await handle_checkin(self.state, request, self._connection)
        except Exception as exc:  # noqa: BLE001 - answered in the one error shape, as the app's handlers do
            response = await error_answer(request, exc)
        await response(scope, receive, send)

    def _instruments_for(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        """The labelled children (looking them up costs a lock and a dict per call; they never change)."""
        key = (method, route, status)
        found = self._instruments.get(key)
        if found is None:
            metrics = self.state.metrics
            found = (metrics.requests.labels(method, route, str(status)), metrics.latency.labels(route))
            if len(self._instruments) < _LABEL_CACHE_BOUND:
                self._instruments[key] = found
        return found
