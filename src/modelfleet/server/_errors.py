"""Every refusal as ``{"error": code, "message": text, "field": dotted.path | null}`` (ADR 0003).

Domain errors map to a status by their class; validation errors name the first
field that failed; unknown routes and methods get the same shape. A database
that is busy (SQLite's write lock, an exhausted pool) or unreachable is a 503
with ``Retry-After``: the request did nothing and may be sent again. Anything
unexpected is logged and answered 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException

from modelfleet.errors import (
    AuthenticationError,
    BadDataError,
    ConflictError,
    ModelfleetError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    TransportError,
)
from modelfleet.store import sqlite_busy

__all__ = ["RETRY_AFTER_SECONDS", "ApiError", "ErrorBody", "error_answer", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[ModelfleetError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
    (BadDataError, 422),
    (TransportError, 503),
)
RETRY_AFTER_SECONDS = 1
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


class ApiError(Exception):
    """A refusal that only makes sense in HTTP terms (a header, a range).

    Args:
        status: the HTTP status.
        code: stable machine-readable reason.
        message: what is wrong, for a person.
        field: dotted path of the offending input, if there is one.
        headers: extra response headers.
    """

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


class ErrorBody(BaseModel):
    """The JSON body of every 4xx/5xx answer."""

    error: str
    message: str
    field: str | None = None


def error_response(
    status: int, code: str, message: str, *, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error answer."""
    body = {"error": code, "message": message, "field": field}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def status_of(error: ModelfleetError) -> int:
    """The HTTP status a domain error stands for (500 for the ones no request should cause)."""
    return next((status for cls, status in _STATUS if isinstance(error, cls)), 500)


def _dotted(loc: Sequence[int | str]) -> str | None:
    parts = [str(part) for part in loc]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    return ".".join(parts) or None


async def _validation(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001 - handler signature
    errors = cast("RequestValidationError", exc).errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return error_response(422, "bad_json", f"the body is not valid JSON: {detail}".rstrip(": "))
    field = _dotted(first.get("loc", ()))
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    return error_response(422, "invalid", message, field=field)


async def _http(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001 - handler signature
    exc = cast("HTTPException", exc)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _api(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001 - handler signature
    exc = cast("ApiError", exc)
    return error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    exc = cast("ModelfleetError", exc)
    status = status_of(exc)
    if status == 500:  # noqa: PLR2004 - the one status that means our fault
        log.error("%s %s failed: %s [%s]", request.method, request.url.path, exc.message, exc.code)
        return error_response(500, "internal", "the server failed; see its log")
    if status == 503:  # noqa: PLR2004 - HTTP status
        log.warning("%s %s: %s [%s]", request.method, request.url.path, exc.message, exc.code)
        return _unavailable(exc.code, exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None  # noqa: PLR2004 - HTTP status
    return error_response(status, exc.code, exc.message, headers=headers)


def _unavailable(code: str, message: str) -> JSONResponse:
    return error_response(503, code, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _database(request: Request, exc: Exception) -> JSONResponse:
    """A lock SQLite could not get in time, no pooled connection free, a connection lost: retry, not broken."""
    if isinstance(exc, PoolTimeoutError) or sqlite_busy(exc):
        log.warning("%s %s: the database is busy: %s", request.method, request.url.path, exc)
        return _unavailable("database_busy", "the database is busy; retry later")
    if getattr(exc, "connection_invalidated", False):
        log.warning("%s %s: the database connection was lost: %s", request.method, request.url.path, exc)
        return _unavailable("database_unavailable", "the database connection was lost; retry later")
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "the server failed; see its log")


_HANDLERS: tuple[tuple[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]], ...] = (
    (RequestValidationError, _validation),
    (HTTPException, _http),
    (ApiError, _api),
    (ModelfleetError, _domain),
    (OperationalError, _database),
    (PoolTimeoutError, _database),
    (Exception, _unexpected),
)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the one JSON shape (each handler is registered for the type it casts to)."""
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)


async def error_answer(request: Request, exc: Exception) -> JSONResponse:
    """The answer the installed handlers give ``exc``, for a route served outside FastAPI's routing."""
    handler = next(handler for kind, handler in _HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)
