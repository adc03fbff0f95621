"""The check-in's two reads as plain SQL on the driver's own connection.

A check-in is two indexed reads, and SQLAlchemy's execution path (context,
result metadata, type processors) costs several times what the database does
for them: 25 µs against 4 µs for the credential read on SQLite, 120 µs against
20 µs for the pin candidates. These reads therefore run on the DBAPI connection
under the SQLAlchemy :class:`~sqlalchemy.Connection` (same pool, same
transaction), with SQL written for both back ends, and convert the few typed
columns themselves (JSON read as text and decoded once per distinct text, UTC
datetimes). SQLAlchemy's ``before_cursor_execute`` listeners still see every
statement, so statement counting and tracing instrumentation keep working.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["as_json", "as_utc", "driver_rows"]

_PARAMSTYLE_FORMAT = {"format", "pyformat"}
_DECODED_BOUND = 4096
_DECODED: dict[str, Any] = {}


def driver_rows(conn: Connection, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``?`` placeholders, no ``%``) on ``conn``'s DBAPI connection and fetch every row.

    Raises:
        sqlalchemy.exc.DBAPIError: the driver's error, wrapped as SQLAlchemy would wrap it
            (``connection_invalidated`` set, and the connection discarded, when it was lost).
    """
    if conn.dialect.paramstyle in _PARAMSTYLE_FORMAT:
        sql = sql.replace("?", "%s")
    dispatch = cast("Any", conn.dispatch)
    dbapi_connection = conn.connection.dbapi_connection
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for listener in dispatch.before_cursor_execute:
            listener(conn, cursor, sql, parameters, None, False)  # noqa: FBT003 - the event's signature
        cursor.execute(sql, parameters)
        return cast("list[tuple[Any, ...]]", cursor.fetchall())
    except conn.dialect.loaded_dbapi.Error as error:
        lost = conn.dialect.is_disconnect(error, dbapi_connection, cursor)
        if lost:
            conn.invalidate(error)  # the pool opens a new connection for the next request
        raise DBAPIError.instance(
            sql, parameters, error, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from error
    finally:
        cursor.close()


def as_json(value: Any) -> Any:  # noqa: ANN401 - a JSON document
    """A JSON column's value: SQLite hands over its text, psycopg the decoded document.

    Texts seen before (a few selectors, tag sets and installed lists recur on
    every check-in) are decoded once; the documents are shared, so callers
    must treat them as read-only (they are typed as ``Mapping``/``Sequence``).
    """
    if not isinstance(value, str):
        return value
    decoded = _DECODED.get(value)
    if decoded is None:
        decoded = json.loads(value)
        if len(_DECODED) >= _DECODED_BOUND:
            del _DECODED[next(iter(_DECODED))]
        _DECODED[value] = decoded
    return decoded


def as_utc(value: datetime | str | None) -> datetime | None:
    """A ``UTCDateTime`` column's value: SQLite hands over naive UTC text, psycopg an aware datetime."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
