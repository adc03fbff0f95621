"""Engines behave the same on SQLite and PostgreSQL: durable settings, integrity, aware times, clear errors."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from modelfleet.errors import ConfigError, TransportError
from modelfleet.store import (
    BundleRow,
    ModelRow,
    check_connection,
    default_database_url,
    make_engine,
    session_factory,
    upgrade,
    write_transaction,
)

ROOT_CONFTEST = Path(__file__).parents[1] / "conftest.py"
T0 = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


def bundle_row(model: str, version: str = "1.0.0", release: int = 1) -> BundleRow:
    return BundleRow(
        model=model,
        version=version,
        release=release,
        sha256="0" * 64,
        size=1,
        manifest="{}",
        created="2026-11-23T12:00:00Z",
        uploaded_at=T0,
    )


# --- SQLite connection settings -----------------------------------------------------------


def test_every_sqlite_connection_runs_wal_normal_sync_foreign_keys_and_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'settings.db'}")
    with engine.connect() as first, engine.connect() as second:
        for connection in (first, second):
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()


def test_sqlite_file_directory_is_created(tmp_path):
    database = tmp_path / "deep" / "er" / "modelfleet.db"
    engine = make_engine(f"sqlite:///{database}")
    check_connection(engine)
    engine.dispose()
    assert database.is_file()


def test_an_in_memory_database_is_one_database_for_every_thread():
    engine = make_engine("sqlite://")
    upgrade(engine)
    seen: list[list[str]] = []
    thread = threading.Thread(target=lambda: seen.append(inspect(engine).get_table_names()))
    thread.start()
    thread.join()
    assert "devices" in seen[0]
    engine.dispose()


def test_default_database_url_is_a_sqlite_file_in_the_data_dir(tmp_path):
    url = default_database_url(tmp_path / "data")
    assert url == f"sqlite:///{tmp_path / 'data' / 'modelfleet.db'}"
    engine = make_engine(url)
    check_connection(engine)
    engine.dispose()
    assert (tmp_path / "data" / "modelfleet.db").is_file()


def test_concurrent_sqlite_writers_wait_for_the_lock_instead_of_failing(tmp_path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    upgrade(url)
    engine = make_engine(url)
    make_session = session_factory(engine)
    failures: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(20):
                with make_session.begin() as session:
                    session.scalar(select(func.count()).select_from(ModelRow))  # read, then write
                    session.add(ModelRow(name=f"m{worker}-{i}", created_at=T0))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with make_session() as session:
        assert session.scalar(select(func.count()).select_from(ModelRow)) == 160
    engine.dispose()
    assert failures == []


def test_a_sqlite_write_transaction_holds_the_write_lock_from_its_first_statement(tmp_path):
    database = tmp_path / "immediate.db"
    engine = make_engine(f"sqlite:///{database}")
    check_connection(engine)
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    with write_transaction(engine) as connection:
        connection.exec_driver_sql("SELECT 1")  # a read only: the lock is held all the same
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.execute("ROLLBACK")
    other.close()
    engine.dispose()


def test_sqlite_read_modify_write_in_write_transactions_loses_no_update(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'counter.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
        connection.exec_driver_sql("INSERT INTO counter VALUES (0)")
    failures: list[BaseException] = []

    def increment() -> None:
        try:
            for _ in range(25):
                with write_transaction(engine) as connection:
                    n = connection.exec_driver_sql("SELECT n FROM counter").scalar_one()
                    connection.exec_driver_sql("UPDATE counter SET n = ?", (n + 1,))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=increment) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT n FROM counter").scalar_one() == 200
    engine.dispose()
    assert failures == []


def test_a_sqlite_lock_held_past_the_busy_timeout_is_a_retryable_busy_error(tmp_path):
    database = tmp_path / "held.db"
    engine = make_engine(f"sqlite:///{database}", busy_timeout_ms=50)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(TransportError) as busy, write_transaction(engine) as connection:
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert busy.value.code == "database_busy"
    assert "retry" in busy.value.message
    holder.execute("ROLLBACK")
    with write_transaction(engine) as connection:
        connection.exec_driver_sql("INSERT INTO t VALUES (2)")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT n FROM t").scalars().all() == [2]
    holder.close()
    engine.dispose()


def test_a_write_transaction_rolls_back_on_an_exception(engine):
    def insert_then_fail() -> None:
        with write_transaction(engine) as connection:
            connection.execute(ModelRow.__table__.insert().values(name="rolled-back", created_at=T0))
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        insert_then_fail()
    with write_transaction(engine) as connection:
        connection.execute(ModelRow.__table__.insert().values(name="kept", created_at=T0))
    with engine.connect() as connection:
        assert connection.execute(select(ModelRow.name)).scalars().all() == ["kept"]


# --- both back ends -----------------------------------------------------------------------


def test_foreign_keys_are_enforced(session):
    session.add(bundle_row(model="no-such-model"))
    with pytest.raises(IntegrityError):
        session.flush()


AWARE_TIMES = {
    "utc": T0,
    "east_of_utc": T0.astimezone(timezone(timedelta(hours=5, minutes=30))),
    "west_of_utc": T0.astimezone(timezone(timedelta(hours=-8))),
}


@pytest.mark.parametrize("moment", AWARE_TIMES.values(), ids=AWARE_TIMES.keys())
def test_aware_datetimes_round_trip_as_the_same_instant_in_utc(engine, moment):
    with session_factory(engine).begin() as session:
        session.add(ModelRow(name="m", created_at=moment))
    with session_factory(engine)() as session:
        stored = session.scalars(select(ModelRow.created_at)).one()
    assert stored == moment
    assert stored.utcoffset() == timedelta(0)
    assert stored.microsecond == 123456


def test_a_naive_datetime_is_refused(session):
    session.add(ModelRow(name="m", created_at=datetime(2026, 11, 23, 12, 0)))  # noqa: DTZ001 - the point of the test
    with pytest.raises(StatementError, match="timezone-aware"):
        session.flush()


def test_savepoint_rollback_undoes_only_its_own_work(session):
    session.add(ModelRow(name="kept", created_at=T0))
    session.flush()
    with pytest.raises(IntegrityError), session.begin_nested():
        session.add(bundle_row(model="no-such-model"))
    session.commit()
    assert session.scalars(select(ModelRow.name)).all() == ["kept"]
    assert session.scalars(select(BundleRow)).all() == []


def test_released_savepoint_is_undone_by_the_outer_rollback(engine):
    with session_factory(engine)() as session:
        session.scalar(select(func.count()).select_from(ModelRow))
        with session.begin_nested():
            session.add(ModelRow(name="inner", created_at=T0))
        session.rollback()
    with session_factory(engine)() as session:
        assert session.scalars(select(ModelRow)).all() == []


def test_sessions_keep_objects_readable_after_commit(engine):
    with session_factory(engine)() as session:
        model = ModelRow(name="m", created_at=T0)
        session.add(model)
        session.commit()
        assert inspect(model).expired_attributes == set()


# --- URLs and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_urls_use_psycopg_3(scheme):
    engine = make_engine(f"{scheme}://user:pw@db.example/fleet")
    assert engine.dialect.driver == "psycopg"
    assert engine.url.drivername == "postgresql+psycopg"


def test_an_unreachable_server_is_a_transport_error_naming_the_url_without_password():
    engine = make_engine("postgresql://fleet:s3cret-pw@127.0.0.1:1/fleet", connect_timeout=2)
    with pytest.raises(TransportError) as caught:
        check_connection(engine)
    assert caught.value.code == "database_unreachable"
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql+psycopg://fleet:***@127.0.0.1:1/fleet" in str(caught.value)


def test_a_missing_database_is_a_config_error_not_a_transport_error(pg_databases):
    engine = make_engine(pg_databases.url("modelfleet_test_does_not_exist"))
    with pytest.raises(ConfigError) as caught:
        check_connection(engine)
    assert caught.value.code == "database_refused"
    assert "modelfleet_test_does_not_exist" in str(caught.value)


def test_an_unopenable_sqlite_file_is_a_config_error(tmp_path):
    (tmp_path / "a-directory.db").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'a-directory.db'}")
    with pytest.raises(ConfigError, match=r"cannot open the database sqlite:///"):
        check_connection(engine)


UNUSABLE_URLS = {
    "garbage": "not a url:s3cret-pw@",
    "bad_port": "postgresql://fleet:s3cret-pw@db.example:port/fleet",
    "unknown_dialect": "nosuchdb://fleet:s3cret-pw@db.example/fleet",
    "missing_driver": "postgresql+nosuchdriver://fleet:s3cret-pw@db.example/fleet",
}


@pytest.mark.parametrize("url", UNUSABLE_URLS.values(), ids=UNUSABLE_URLS.keys())
def test_an_unusable_url_is_a_config_error_without_the_password(url):
    with pytest.raises(ConfigError) as caught:
        make_engine(url)
    assert caught.value.code == "bad_database_url"
    assert "s3cret-pw" not in str(caught.value)
    assert "***" in str(caught.value)


def test_sqlite_directory_that_cannot_be_created_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create the directory"):
        make_engine(f"sqlite:///{tmp_path / 'file' / 'sub' / 'modelfleet.db'}")


# --- the PostgreSQL half cannot be skipped silently in CI -------------------------------------

PG_TEST = "def test_needs_postgres(pg_server_url):\n    pass\n"


@pytest.mark.parametrize(("ci", "outcome"), [("true", {"errors": 1}), ("", {"skipped": 1})])
def test_unreachable_postgresql_skips_locally_and_fails_in_ci(pytester, monkeypatch, ci, outcome):
    monkeypatch.setenv("MODELFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(PG_TEST)
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)
    result.stdout.fnmatch_lines(["*PostgreSQL is not reachable*"])


def test_postgresql_is_reachable_here(pg_server_url):
    engine = make_engine(pg_server_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
