"""Engines and sessions for SQLite (embedded default) and PostgreSQL (scale-out).

SQLite connections run in WAL mode with ``synchronous=NORMAL``, foreign keys
enforced and a busy timeout, set on every new connection. Transactions keep the
driver's behaviour: a transaction begins at the first write, so reads before it
see the latest committed data (as PostgreSQL's default READ COMMITTED does) and
concurrent writers wait for the lock instead of failing. Savepoints begin the
transaction first, so ``Session.begin_nested()`` rolls back what it should.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
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
]

SQLITE_BUSY_TIMEOUT_MS = 5000
_POSTGRES_DRIVERS = {"postgresql", "postgres"}
# Refusals that retrying cannot fix: bad credentials (SQLSTATE class 28), unknown database or role.
# psycopg reports connection failures without a SQLSTATE, so the server's message decides there.
_NOT_TRANSIENT_SQLSTATE = re.compile(r"28...|3D000")
_NOT_TRANSIENT_MESSAGE = re.compile(r"does not exist|authentication failed|no pg_hba\.conf entry|permission denied")


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


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, connect_timeout: int = 10) -> Engine:
    """Create an engine for any SQLAlchemy URL, tuned for SQLite or PostgreSQL.

    ``postgresql://`` (and ``postgres://``) URLs use psycopg 3. No connection is
    made here; :func:`check_connection` or the first query makes one.

    Raises:
        ConfigError: the URL cannot be parsed, names an unknown dialect or driver,
            or the SQLite file's directory cannot be created.
    """
    parsed = _parse(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, pool_size=pool_size, max_overflow=max_overflow)
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
    """Create a pooled engine for a database server, with dead connections detected before use."""
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() == "psycopg":
        connect_args = {"connect_timeout": timeout, "application_name": "modelfleet"}
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL, *, pool_size: int, max_overflow: int) -> Engine:
    """Create a SQLite engine with the connection settings every connection needs."""
    path = _sqlite_file(url)
    if path is None:
        # One shared connection: a private in-memory database per thread would look empty to the others.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        _create_parent(path, url)
        engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    event.listen(engine, "connect", _configure_sqlite_connection)
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


def _configure_sqlite_connection(dbapi_connection: Any, connection_record: object) -> None:  # noqa: ANN401, ARG001 - DBAPI connections are untyped
    """Apply the journal, durability, integrity and locking settings to a new SQLite connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


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
