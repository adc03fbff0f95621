"""Bounds on what a request may carry, checked by the request gate before the app runs.

A declared ``Content-Length`` above the bound is a 413 at once. A chunked body
is buffered up to the bound and refused as soon as it passes it. Routes that
stream their body (bundle upload) get their own bound here and count their
chunks themselves. A NUL character in the path or query is a 422: PostgreSQL
can neither store nor compare it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope

from modelfleet.server._errors import error_response

__all__ = ["body_refusal", "buffered_body", "url_refusal"]


def url_refusal(scope: Scope) -> ASGIApp | None:
    """A 422 for a NUL character in the path or query string, else None."""
    if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
        return error_response(422, "invalid", "the URL must not contain NUL characters")
    return None


def body_refusal(headers: Headers, limit: int) -> ASGIApp | None:
    """A 400 for a ``Content-Length`` that is not a number, a 413 for one above ``limit``, else None."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        return error_response(400, "bad_content_length", "Content-Length is not a number")
    return _too_large(limit) if int(declared) > limit else None


async def buffered_body(headers: Headers, receive: Receive, limit: int) -> tuple[Receive, ASGIApp | None]:
    """For a chunked body: buffer it and replay it, or a 413 as soon as it passes ``limit``.

    A body with a declared length (checked by :func:`body_refusal`) or none at all passes unchanged.
    """
    if "content-length" in headers or "transfer-encoding" not in headers:
        return receive, None
    body = await _buffered(receive, limit)
    if body is None:
        return receive, _too_large(limit)
    return _replay(body, receive), None


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
