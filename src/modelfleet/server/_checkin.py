"""Check-in: store a changed report, note last-seen in memory, answer the desired state with an ETag.

The unchanged path reads the credential and the desired state on one pooled
connection and writes nothing: the report is compared by hash with what the
device row already holds, and last-seen goes to the in-memory buffer. It uses
no dependency injection: for a request this small, FastAPI's dependency solver
costs more than both reads together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import replace
from typing import Any

from fastapi import Request, Response
from pydantic import TypeAdapter
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from modelfleet.protocol import CheckinRequest, DesiredModel
from modelfleet.server._auth import accepted_device, bearer_token
from modelfleet.server._body import parse_json, request_body
from modelfleet.server._state import ServerState
from modelfleet.store import DeviceRecord, record_report, write_transaction

__all__ = [
    "CHECKIN_OPENAPI",
    "CHECKIN_PATH",
    "REPORT_CACHE_ENTRIES",
    "AnswerCache",
    "LoopConnection",
    "ReportCache",
    "answer",
    "etag_matches",
    "handle_checkin",
    "report_hash",
]

log = logging.getLogger(__name__)

CHECKIN_PATH = "/v1/devices/checkin"
REPORT_CACHE_ENTRIES = 4096

CHECKIN_OPENAPI: dict[str, Any] = {
    **request_body(CheckinRequest),
    "security": [{"DeviceCredential": []}],
    "parameters": [
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "The ETag of the desired state the device holds; unchanged answers are 304.",
            "schema": {"type": "string", "maxLength": 1024},
        }
    ],
}


async def handle_checkin(
    state: ServerState, request: Request, connect: Callable[[], AbstractContextManager[Connection]] | None = None
) -> Response:
    """Authenticate, parse, note last-seen, store a changed report, answer: the whole check-in.

    The unchanged path stays on the event loop and never awaits while it holds
    a connection (``connect``, default a pooled one); a changed report is
    written and answered in one worker thread.
    """
    credential = bearer_token(request.headers.get("authorization"))
    body = await request.body()
    if_none_match = request.headers.get("if-none-match")
    with (connect or state.engine.connect)() as connection:
        device = accepted_device(connection, credential)
        report, digest = _REPORTS.read(body)
        state.last_seen.note(device.id, state.clock.now())
        if digest == device.report_hash:
            return answer(state, connection, device, if_none_match)
    return await run_in_threadpool(_store_and_answer, state, device, report, digest, if_none_match)


class ReportCache:
    """Check-in bodies already validated, with their report and its hash, newest ``entries`` kept.

    Devices send the same bytes poll after poll (and devices alike send alike
    bytes): a body seen before needs neither validation nor hashing again. Only
    bodies that validated are kept, so a cached answer is the one parsing would give.
    """

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._reports: dict[bytes, tuple[dict[str, Any], str]] = {}

    def read(self, body: bytes) -> tuple[dict[str, Any], str]:
        """The report in ``body`` (JSON-ready) and its :func:`report_hash`.

        Raises:
            RequestValidationError: the body is not a valid check-in report (names the field).
        """
        known = self._reports.get(body)
        if known is not None:
            return known
        report = parse_json(CheckinRequest, body).model_dump(mode="json")
        known = (report, report_hash(report))
        if len(self._reports) >= self._entries:
            del self._reports[next(iter(self._reports))]  # the oldest: dicts keep insertion order
        self._reports[body] = known
        return known


_REPORTS = ReportCache(REPORT_CACHE_ENTRIES)


class AnswerCache:
    """The JSON of each distinct desired state, newest ``entries`` kept.

    Devices alike are told alike things, so the desired part of an answer is
    serialised once and spliced between the device id and the poll interval;
    the bytes are those ``CheckinResponse.model_dump_json()`` makes.
    """

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._desired: dict[tuple[DesiredModel, ...], bytes] = {}

    def content(self, device_id: str, desired: tuple[DesiredModel, ...], poll_seconds: int) -> bytes:
        """The JSON body of a check-in answer."""
        part = self._desired.get(desired)
        if part is None:
            part = _DESIRED_JSON.dump_json(desired)
            if len(self._desired) >= self._entries:
                del self._desired[next(iter(self._desired))]
            self._desired[desired] = part
        head = _DEVICE_ID_JSON.dump_json(device_id)
        return b'{"device_id":%b,"desired":%b,"poll_seconds":%d}' % (head, part, poll_seconds)


_DESIRED_JSON = TypeAdapter(tuple[DesiredModel, ...])
_DEVICE_ID_JSON = TypeAdapter(str)
_ANSWERS = AnswerCache(REPORT_CACHE_ENTRIES)


class LoopConnection:
    """One connection for the check-ins the event loop answers, kept open from one to the next.

    Checking a connection out of SQLAlchemy's pool and back in costs about as
    much as one of the check-in's reads. The event loop answers one check-in at
    a time and never awaits while it reads, so one connection serves them all.
    On a database server it runs in autocommit mode: its reads need no
    transaction, and that saves a BEGIN and a ROLLBACK round trip per check-in
    (each read sees the latest committed data, as under READ COMMITTED). After each
    check-in anything still open is rolled back, as the pool does when a
    connection comes back; a connection found dead is dropped and the next
    check-in opens a new one. Use it from the event loop's thread only.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None

    @contextmanager
    def __call__(self) -> Iterator[Connection]:
        """The kept connection (opened if need be), its transaction ended when the block ends."""
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            connection = self._connection = self._engine.connect()
            if connection.dialect.name != "sqlite":  # SQLite's driver begins nothing before a read anyway
                connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            yield connection
        finally:
            self._end(connection)

    def close(self) -> None:
        """Give the connection back to the pool (before the engine is disposed of)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with suppress(SQLAlchemyError):
                connection.close()

    def _end(self, connection: Connection) -> None:
        if connection.invalidated:
            self.close()
            return
        try:
            connection.rollback()  # a transaction SQLAlchemy began (a resolver's own reads)
            connection.connection.dbapi_connection.rollback()  # type: ignore[union-attr] # the driver's own
        except (SQLAlchemyError, connection.dialect.loaded_dbapi.Error):
            log.warning("ending a check-in's transaction failed; the connection is dropped", exc_info=True)
            self.close()


def report_hash(report: dict[str, Any]) -> str:
    """The sha256 of a report's JSON content (key order does not matter)."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _store_and_answer(
    state: ServerState, device: DeviceRecord, report: dict[str, Any], digest: str, if_none_match: str | None
) -> Response:
    """Write the changed report and answer from what the device reports now, in one transaction."""
    with write_transaction(state.engine) as connection:
        installed = report["installed"]
        record_report(connection, device.id, inventory=report["inventory"], installed=installed, report_hash=digest)
        state.metrics.reports_stored.inc()
        return answer(state, connection, replace(device, installed=tuple(installed), report_hash=digest), if_none_match)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, ``*`` matches)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def answer(state: ServerState, connection: Connection, device: DeviceRecord, if_none_match: str | None) -> Response:
    """The desired state as JSON with its ETag, or 304 when the device already has it."""
    desired = tuple(state.resolver(connection, device, state.config.public_url))
    content = _ANSWERS.content(device.id, desired, state.config.poll_seconds)
    etag = f'"{hashlib.sha256(content).hexdigest()}"'
    state.metrics.checkins.inc()
    if etag_matches(if_none_match, etag):
        state.metrics.not_modified.inc()
        return Response(status_code=304, headers={"ETag": etag})
    return Response(content, media_type="application/json", headers={"ETag": etag})
