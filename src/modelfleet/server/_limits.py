"""Bounds on what a request may carry, as pure ASGI middleware that answers before the app runs.

A declared ``Content-Length`` above the bound is a 413 at once. A chunked body
is buffered up to the bound and refused as soon as it passes it. Routes that
stream their body (bundle upload) get their own bound here and count their
chunks themselves. A NUL character in the path or query is a 422: PostgreSQL
can neither store nor compare it.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelfleet.server._errors import error_response

__all__ = ["BodyLimit", "NoNulInUrl"]


class BodyLimit:
    """Refuse request bodies above ``max_body_bytes`` (or a streamed route's own bound) with 413.

    Args:
        app: the wrapped ASGI app.
        max_body_bytes: bound for every route not in ``streamed``.
        streamed: ``(method, path) -> bound`` for routes that read their body as a stream.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, streamed: Mapping[tuple[str, str], int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.streamed = dict(streamed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, buffer a chunked body, then call the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = (scope["method"], scope["path"])
        limit = self.streamed.get(route, self.max_body_bytes)
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "bad_content_length", "Content-Length is not a number")(scope, receive, send)
            elif int(declared) > limit:
                await _too_large(limit)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if "transfer-encoding" not in headers or route in self.streamed:
            await self.app(scope, receive, send)
            return
        body = await _buffered(receive, limit)
        if body is None:
            await _too_large(limit)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _too_large(limit: int) -> ASGIApp:
    return error_response(413, "too_large", f"the request body exceeds the limit of {limit} bytes")


async def _buffered(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or ``None`` as soon as it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body over once, then passes through (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class NoNulInUrl:
    """Refuse a request whose path or query string holds a NUL character.

    Args:
        app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 422 for a NUL in the URL, else call the app."""
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            await error_response(422, "invalid", "the URL must not contain NUL characters")(scope, receive, send)
            return
        await self.app(scope, receive, send)
