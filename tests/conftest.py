"""Real databases for every test that needs one: SQLite files and PostgreSQL databases.

``database_url`` runs a test twice, on a fresh migrated SQLite file and on a
fresh migrated PostgreSQL database. Both are copies of a database migrated once
per session: a file copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for
PostgreSQL (a quarter of the cost of migrating each test's database), dropped
after the test. Without a server on 127.0.0.1:5432 the PostgreSQL half is
skipped with the reason shown; with ``CI=true`` it fails instead, since CI must
run it. ``MODELFLEET_TEST_POSTGRES_URL`` points the tests at another server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from modelfleet.errors import ModelfleetError
from modelfleet.store import FilesystemBlobStore, check_connection, make_engine, session_factory, upgrade

pytest_plugins = ["pytester"]

POSTGRES_URL = os.environ.get("MODELFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]
DATABASE_FILE = "modelfleet.db"


class PostgresDatabases:
    """Creates and drops uniquely named databases on one PostgreSQL server."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._engine = make_engine(server_url)
        self._admin = self._engine.execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs it

    def create(self, template: str | None = None) -> str:
        """Create an empty database (or a copy of ``template``) and return its URL."""
        name = f"modelfleet_test_{uuid.uuid4().hex[:16]}"
        clause = f" TEMPLATE {template}" if template else ""
        with self._admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}{clause}"))
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop a database made by :meth:`create`, ending its connections first."""
        name = make_url(url).database
        with self._admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def url(self, name: str) -> str:
        """Return the URL of database ``name`` on this server."""
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        """Release the administrative connections."""
        self._engine.dispose()


def postgres_problem(url: str) -> str | None:
    """Say why the PostgreSQL server at ``url`` cannot be used, or None when it can."""
    try:
        engine = make_engine(url, connect_timeout=3)
    except ModelfleetError as exc:
        return str(exc)
    try:
        check_connection(engine)
    except ModelfleetError as exc:
        return str(exc)
    finally:
        engine.dispose()
    return None


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server's URL; skips (fails under CI=true) when it cannot be reached."""
    problem = postgres_problem(POSTGRES_URL)
    if problem is not None:
        reason = f"PostgreSQL is not reachable, PostgreSQL tests not run: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true requires the PostgreSQL run)", pytrace=False)
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def pg_databases(pg_server_url: str) -> Iterator[PostgresDatabases]:
    """Database maker for the session's PostgreSQL server."""
    databases = PostgresDatabases(pg_server_url)
    yield databases
    databases.close()


@pytest.fixture(scope="session")
def pg_template(pg_databases: PostgresDatabases) -> Iterator[str]:
    """Name of a database migrated to head once per session, cloned for each test."""
    url = pg_databases.create()
    upgrade(url)
    yield str(make_url(url).database)
    pg_databases.drop(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a SQLite database migrated to head once per session, copied for each test."""
    directory = tmp_path_factory.mktemp("sqlite-template")
    engine = make_engine(f"sqlite:///{directory / DATABASE_FILE}")
    upgrade(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the database file
    return directory


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database with no tables, on each back end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / DATABASE_FILE}"
        return
    databases: PostgresDatabases = request.getfixturevalue("pg_databases")
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to the newest schema, on each back end."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        for part in template.iterdir():
            shutil.copyfile(part, tmp_path / part.name)
        yield f"sqlite:///{tmp_path / DATABASE_FILE}"
        return
    databases: PostgresDatabases = request.getfixturevalue("pg_databases")
    url = databases.create(template=request.getfixturevalue("pg_template"))
    yield url
    databases.drop(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's fresh database."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on the test's fresh database."""
    with session_factory(engine)() as session:
        yield session


@pytest.fixture
def blob_store(tmp_path: Path) -> FilesystemBlobStore:
    """A filesystem blob store in the test's temporary directory."""
    return FilesystemBlobStore(tmp_path / "blobs")
