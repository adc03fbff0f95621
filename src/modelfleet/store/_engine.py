"""Engines and sessions for SQLite (embedded default) and PostgreSQL (scale-out).

SQLite connections run in WAL mode with ``synchronous=NORMAL``, foreign keys
enforced and a busy timeout, set on every new connection. Reads keep the
driver's behaviour (no transaction until the first write, so each read sees the
latest committed data, as PostgreSQL's READ COMMITTED does). Writes go through
:func:`write_transaction`: on SQLite it takes the write lock at ``BEGIN
IMMEDIATE``, after the process's other writers, so a transaction never has to
upgrade a read lock (which SQLite refuses at once with "database is locked")
and writers do not starve each other polling the lock. Savepoints begin the
transaction first, so ``Session.begin_nested()`` rolls back what it should.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from modelfleet.errors import ConfigError, ModelfleetError, TransportError

__all__ = [
    "check_connection",
    "connect",
    "default_database_url",
    "make_engine",
    "redact_url",
    "session_factory",
    "sqlite_busy",
    "write_transaction",
]

SQLITE_BUSY_TIMEOUT_MS = 5000
_WAL_RETRY_S = 0.005
_POSTGRES_DRIVERS = {"postgresql", "postgres"}
# Refusals that retrying cannot fix: bad credentials (SQLSTATE class 28), unknown database or role.
# psycopg reports connection failures without a SQLSTATE, so the server's message decides there.
_NOT_TRANSIENT_SQLSTATE = re.compile(r"28...|3D000")
_NOT_TRANSIENT_MESSAGE = re.compile(r"does not exist|authentication failed|no pg_hba\.conf entry|permission denied")
_SQLITE_BUSY_MESSAGE = re.compile(r"database( table)? is locked|database is busy")


@dataclass(frozen=True, slots=True)
class _Writers:
    """A SQLite engine's writers queue on ``turn``, so at most one of them at a time polls SQLite's lock."""

    turn: threading.Lock
    timeout_s: float


_WRITERS: weakref.WeakKeyDictionary[Engine, _Writers] = weakref.WeakKeyDictionary()
_WRITERS_GUARD = threading.Lock()


def redact_url(url: str | URL) -> str:
    """Render a database URL with its password replaced by ``***`` (for messages and logs)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable: keep the scheme and the host part, hide all credentials.
        if "@" not in url:
            return url
        scheme = url.split("://", 1)[0] + "://" if "://" in url else ""
        return f"{scheme}***@{url.rsplit('@', 1)[1]}"


def default_database_url(data_dir: Path) -> str:
    """Return the embedded default: the SQLite file ``data_dir/modelfleet.db``."""
    return f"sqlite:///{(data_dir / 'modelfleet.db').absolute()}"


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 20,
    connect_timeout: int = 10,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
) -> Engine:
    """Create an engine for any SQLAlchemy URL, tuned for SQLite or PostgreSQL.

    ``postgresql://`` (and ``postgres://``) URLs use psycopg 3. No connection is
    made here; :func:`check_connection` or the first query makes one.
    ``busy_timeout_ms`` bounds how long a SQLite writer waits for the write lock.

    Raises:
        ConfigError: the URL cannot be parsed, names an unknown dialect or driver,
            or the SQLite file's directory cannot be created.
    """
    parsed = _parse(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, pool_size=pool_size, max_overflow=max_overflow, busy_ms=busy_timeout_ms)
        return _server_engine(parsed, pool_size=pool_size, max_overflow=max_overflow, timeout=connect_timeout)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        msg = f"cannot use the database URL {redact_url(parsed)}: {exc}"
        raise ConfigError(msg, code="bad_database_url") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session maker whose objects stay readable after commit (the API returns them)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """Open a connection, turning a failure to connect into a modelfleet error.

    Raises:
        TransportError: the database server cannot be reached (retrying may help).
        ConfigError: the server refuses the credentials or has no such database,
            or the SQLite file cannot be opened.
    """
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        raise _connect_error(engine, exc) from exc
    with connection:
        yield connection


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that writes, committed when the block ends without an exception.

    On SQLite the process's writers take turns (waiting at most the busy timeout
    for their turn), and each turn starts with ``BEGIN IMMEDIATE``, which waits up
    to the busy timeout for the other processes' writers; other back ends just begin.

    Raises:
        TransportError: on SQLite, the write lock stayed taken for the whole busy
            timeout (``database_busy``); nothing was written and retrying may help.
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    writers = _writers(engine)
    if not writers.turn.acquire(timeout=writers.timeout_s):
        raise _busy_error(engine, writers.timeout_s)
    try:
        with engine.begin() as connection:
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except OperationalError as exc:
                if sqlite_busy(exc):
                    raise _busy_error(engine, writers.timeout_s) from exc
                raise
            yield connection
    finally:
        writers.turn.release()


def sqlite_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite saying another connection holds the lock it needs (SQLITE_BUSY/LOCKED)."""
    if not isinstance(error, OperationalError):
        return False
    return _SQLITE_BUSY_MESSAGE.search(str(error.orig)) is not None


def _writers(engine: Engine, busy_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> _Writers:
    """The writer queue of a SQLite engine (made on first use for engines not made by :func:`make_engine`)."""
    with _WRITERS_GUARD:
        writers = _WRITERS.get(engine)
        if writers is None:
            writers = _WRITERS[engine] = _Writers(threading.Lock(), busy_ms / 1000)
        return writers


def _busy_error(engine: Engine, seconds: float) -> TransportError:
    msg = f"the database {redact_url(engine.url)} stayed locked by other writers for {seconds:g} s; retry later"
    return TransportError(msg, code="database_busy")


def check_connection(engine: Engine) -> None:
    """Connect and run ``SELECT 1``, so a server fails at start rather than on its first request."""
    with connect(engine) as connection:
        connection.execute(text("SELECT 1"))


def _parse(url: str) -> URL:
    """Parse ``url``, mapping plain PostgreSQL URLs to the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        msg = f"cannot parse the database URL {redact_url(url)}: expected dialect[+driver]://..."
        raise ConfigError(msg, code="bad_database_url") from exc
    if parsed.drivername in _POSTGRES_DRIVERS:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _server_engine(url: URL, *, pool_size: int, max_overflow: int, timeout: int) -> Engine:
    """Create a pooled engine for a database server.

    No pre-ping: it would cost a round trip on every checkout, i.e. on every
    check-in. A connection found dead when used fails that one request (the
    server answers 503 with Retry-After) and makes the pool drop every
    connection older than it, so the next requests reconnect.
    """
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() == "psycopg":
        connect_args = {"connect_timeout": timeout, "application_name": "modelfleet"}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL, *, pool_size: int, max_overflow: int, busy_ms: int) -> Engine:
    """Create a SQLite engine with the connection settings every connection needs."""
    path = _sqlite_file(url)
    connect_args: dict[str, Any] = {"timeout": busy_ms / 1000}
    if path is None:
        # One shared connection: a private in-memory database per thread would look empty to the others.
        connect_args["check_same_thread"] = False
        engine = create_engine(url, poolclass=StaticPool, connect_args=connect_args)
    else:
        _create_parent(path, url)
        engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, connect_args=connect_args)
    _writers(engine, busy_ms)
    event.listen(engine, "connect", partial(_configure_sqlite_connection, busy_ms=busy_ms))
    event.listen(engine, "savepoint", _begin_before_first_savepoint)
    return engine


def _sqlite_file(url: URL) -> Path | None:
    """Return the database file of a SQLite URL, or None for an in-memory or URI database."""
    database = url.database or ""
    if database in {"", ":memory:"} or database.startswith("file:") or url.query.get("uri"):
        return None
    return Path(database)


def _create_parent(path: Path, url: URL) -> None:
    """Create the directory that will hold the SQLite file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the directory of the database {redact_url(url)}: {exc.strerror}"
        raise ConfigError(msg, code="bad_database_url") from exc


def _configure_sqlite_connection(dbapi_connection: Any, connection_record: object, *, busy_ms: int) -> None:  # noqa: ANN401, ARG001 - DBAPI connections are untyped
    """Apply the journal, durability, integrity and locking settings to a new SQLite connection."""
    cursor = dbapi_connection.cursor()
    try:
        _enter_wal(cursor, busy_ms)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    finally:
        cursor.close()


def _enter_wal(cursor: sqlite3.Cursor, busy_ms: int) -> None:
    """Switch the file to WAL, retrying a lock conflict until the busy timeout.

    Two connections switching a new file at the same moment both hold a shared lock and want an exclusive
    one; SQLite answers one of them "database is locked" at once instead of calling the busy handler (waiting
    could deadlock), so starting replicas would fail at random. Once one has switched, the mode is kept in
    the file and the switch is a no-op.
    """
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)
        else:
            return


def _begin_before_first_savepoint(connection: Connection, name: str) -> None:  # noqa: ARG001 - event signature
    """Open the SQLite transaction before a savepoint; else releasing it would commit everything."""
    dbapi_connection = connection.connection.driver_connection
    if dbapi_connection is not None and not dbapi_connection.in_transaction:
        dbapi_connection.execute("BEGIN")


def _connect_error(engine: Engine, exc: DBAPIError) -> ModelfleetError:
    """Translate a failed connection attempt; the message names the URL without its password."""
    detail = _driver_message(exc, engine.url.password)
    where = redact_url(engine.url)
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    permanent = _NOT_TRANSIENT_SQLSTATE.fullmatch(sqlstate) or _NOT_TRANSIENT_MESSAGE.search(detail)
    if engine.dialect.name == "sqlite" or permanent:
        return ConfigError(f"cannot open the database {where}: {detail}", code="database_refused")
    return TransportError(f"cannot reach the database {where}: {detail}", code="database_unreachable")


def _driver_message(exc: DBAPIError, password: str | None) -> str:
    """Return the first line of the driver's error, with the password masked should it appear."""
    lines = str(exc.orig).strip().splitlines()
    detail = lines[0] if lines else type(exc.orig).__name__
    return detail.replace(password, "***") if password else detail
