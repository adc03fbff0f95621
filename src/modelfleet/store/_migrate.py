"""Schema migrations with Alembic, configured in code (the revisions ship inside the package).

Each upgrade or downgrade runs in one transaction: PostgreSQL has transactional
DDL, and on SQLite the run takes the write lock (``BEGIN IMMEDIATE``) with
foreign keys off while tables are rebuilt, checks them before it commits, and
turns them back on, as SQLite's own procedure for schema changes prescribes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, func, select

from modelfleet.errors import StoreError
from modelfleet.store._engine import connect, make_engine, redact_url

__all__ = [
    "MIGRATIONS_DIR",
    "UPGRADE_COMMAND",
    "alembic_config",
    "check_schema_current",
    "current_revision",
    "downgrade",
    "head_revision",
    "revisions",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
UPGRADE_COMMAND = "modelfleet db upgrade"
# Key of the PostgreSQL advisory lock that lets one of several starting replicas migrate at a time.
_MIGRATION_LOCK_KEY = 0x6D66_6D69_6772  # "mfmigr"
# How long a SQLite replica waits for another's migration (which holds the write lock throughout): as long as
# a migration may take on a slow disk, not the few seconds a request may wait. PostgreSQL's lock waits unbounded.
_MIGRATION_BUSY_TIMEOUT_MS = 300_000


def alembic_config(connection: Connection | None = None) -> Config:
    """Return the Alembic configuration: our script directory, and the connection env.py uses."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s")
    config.attributes["connection"] = connection
    return config


def revisions() -> list[str]:
    """Return every revision id, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def head_revision() -> str:
    """Return the revision this code needs the database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        msg = f"no migration revisions found in {MIGRATIONS_DIR}"
        raise RuntimeError(msg)
    return head


def upgrade(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest) in one transaction.

    Raises:
        StoreError: the database is at a revision this code does not know (it is newer).
        ValueError: ``revision`` names no known revision.
    """
    with _engine(engine_or_url) as engine, _migration_transaction(engine) as connection:
        _refuse_unknown(engine, _revision_of(connection))
        _run(command.upgrade, connection, revision)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` drops every table) in one transaction.

    Raises:
        StoreError: the database is at a revision this code does not know (it is newer).
        ValueError: ``revision`` names no known revision.
    """
    with _engine(engine_or_url) as engine, _migration_transaction(engine) as connection:
        _refuse_unknown(engine, _revision_of(connection))
        _run(command.downgrade, connection, revision)


def current_revision(engine: Engine) -> str | None:
    """Return the database's schema revision, or None when it has no modelfleet schema."""
    with connect(engine) as connection:
        return _revision_of(connection)


def check_schema_current(engine: Engine) -> None:
    """Refuse to run on a database whose schema is not the one this code was written for.

    Raises:
        StoreError: the schema is missing (``schema_missing``), older (``schema_behind``)
            or newer (``schema_ahead``) than this code; the message says what to run.
        TransportError: the database server cannot be reached.
        ConfigError: the database refuses the connection or cannot be opened.
    """
    current = current_revision(engine)
    _refuse_unknown(engine, current)
    head = head_revision()
    where = redact_url(engine.url)
    if current is None:
        msg = f"the database {where} has no modelfleet schema; create it with `{UPGRADE_COMMAND}`"
        raise StoreError(msg, code="schema_missing")
    if current != head:
        msg = f"the database {where} is at schema {current}, this modelfleet needs {head}; run `{UPGRADE_COMMAND}`"
        raise StoreError(msg, code="schema_behind")


def _revision_of(connection: Connection) -> str | None:
    """Read the revision stamped in ``alembic_version`` (None if there is none)."""
    return MigrationContext.configure(connection).get_current_revision()


def _refuse_unknown(engine: Engine, current: str | None) -> None:
    """Raise when the database was migrated by a newer modelfleet than this one."""
    if current is not None and current not in revisions():
        msg = (
            f"the database {redact_url(engine.url)} is at schema {current}, which this modelfleet "
            f"(newest schema {head_revision()}) does not know; run a newer modelfleet"
        )
        raise StoreError(msg, code="schema_ahead")


def _run(step: Callable[[Config, str], None], connection: Connection, revision: str) -> None:
    """Run an Alembic command on ``connection``; an unknown target revision is the caller's error."""
    try:
        step(alembic_config(connection), revision)
    except CommandError as exc:
        msg = f"cannot migrate to revision {revision!r}: {exc}"
        raise ValueError(msg) from exc


@contextlib.contextmanager
def _engine(engine_or_url: Engine | str) -> Iterator[Engine]:
    """Use the given engine, or make one for a URL and dispose of it afterwards."""
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url, busy_timeout_ms=_MIGRATION_BUSY_TIMEOUT_MS)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """Yield a connection inside the one transaction a migration run commits or rolls back."""
    with connect(engine) as connection:
        if connection.dialect.name == "sqlite":
            with _sqlite_schema_transaction(connection):
                yield connection
            return
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            yield connection


@contextlib.contextmanager
def _sqlite_schema_transaction(connection: Connection) -> Iterator[None]:
    """Take the write lock with foreign keys off, check them before commit, then turn them on."""
    busy_ms = None
    try:
        with connection.begin():
            # The driver opens transactions only before DML, so the PRAGMAs apply and BEGIN is ours.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            busy_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
            connection.exec_driver_sql(f"PRAGMA busy_timeout={_MIGRATION_BUSY_TIMEOUT_MS}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield
            _check_foreign_keys(connection)
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        if busy_ms is not None:
            connection.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_ms)}")
        connection.rollback()


def _check_foreign_keys(connection: Connection) -> None:
    """Raise when the migrated rows break a foreign key (SQLite did not check while they were off)."""
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if violations:
        table, rowid, parent, _ = violations[0]
        msg = f"migration left {len(violations)} rows breaking foreign keys, e.g. {table} row {rowid} -> {parent}"
        raise StoreError(msg, code="foreign_key_violation")
