"""Migrations build exactly the tables' schema, on SQLite and PostgreSQL, atomically, from any revision."""

from __future__ import annotations

import fnmatch
import shutil
import threading
import tomllib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from modelfleet import errors
from modelfleet.store import (
    MIGRATIONS_DIR,
    UPGRADE_COMMAND,
    Base,
    check_schema_current,
    connect,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    revisions,
    upgrade,
)
from modelfleet.store import _migrate as migrate_module

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
TABLES = sorted(Base.metadata.tables)

# A second revision, written into a copy of the script directory by `extra_revision`.
REVISION_TEMPLATE = '''"""Test revision."""

import sqlalchemy as sa
from alembic import op

revision = "0099_test"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
    op.drop_table("test_extra")
'''
ADD_TABLE = '    op.create_table("test_extra", sa.Column("id", sa.Integer(), primary_key=True))'
ADD_TABLE_THEN_FAIL = ADD_TABLE + '\n    raise RuntimeError("revision failed half way")'
ADD_ORPHAN_ROW = """    op.execute(
        "INSERT INTO pins (model, version, created_at) VALUES ('ghost-model', '1.0.0', CURRENT_TIMESTAMP)"
    )"""


def schema_differences(engine: Engine) -> list[object]:
    """What alembic's autogenerate would change to make the database match ``Base.metadata``."""
    with connect(engine) as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def table_names(engine: Engine) -> list[str]:
    return sorted(set(inspect(engine).get_table_names()) - {"alembic_version"})


@pytest.fixture
def empty_engine(empty_database_url):
    engine = make_engine(empty_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def extra_revision(tmp_path, monkeypatch):
    """Point the migrations at a copy of the script directory with one more revision (body given)."""

    def add(upgrade_body: str) -> str:
        scripts = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
        text_ = REVISION_TEMPLATE.format(head=head_revision(), upgrade=upgrade_body)
        (scripts / "versions" / "0099_test.py").write_text(text_)
        monkeypatch.setattr(migrate_module, "MIGRATIONS_DIR", scripts)
        return "0099_test"

    return add


# --- the schema ---------------------------------------------------------------------------


def test_upgrade_builds_exactly_the_schema_of_the_tables(empty_engine):
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert table_names(empty_engine) == TABLES
    assert schema_differences(empty_engine) == []


def test_constraint_names_follow_the_naming_convention(engine):
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("devices")["name"] == "pk_devices"
    assert [fk["name"] for fk in inspector.get_foreign_keys("pins")] == ["fk_pins_model_models"]
    assert {uq["name"] for uq in inspector.get_unique_constraints("bundles")} == {
        "uq_bundles_model_release",
        "uq_bundles_model_version",
    }
    assert {ix["name"] for ix in inspector.get_indexes("pins")} == {"ix_pins_device_id", "ix_pins_model"}


def test_upgrade_downgrade_to_base_and_upgrade_again(empty_engine):
    upgrade(empty_engine)
    downgrade(empty_engine, "base")
    assert current_revision(empty_engine) is None
    assert table_names(empty_engine) == []
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_differences(empty_engine) == []


@pytest.mark.parametrize("start", revisions())
def test_upgrade_from_every_earlier_revision_reaches_the_schema_of_the_tables(empty_engine, start):
    upgrade(empty_engine, start)
    assert current_revision(empty_engine) == start
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_differences(empty_engine) == []


def test_upgrade_of_a_current_database_changes_nothing(engine):
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_upgrade_takes_a_url(empty_database_url):
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    check_schema_current(engine)
    engine.dispose()


def test_in_memory_sqlite_is_migrated_on_the_engines_own_connection():
    engine = make_engine("sqlite://")
    upgrade(engine)
    check_schema_current(engine)
    assert table_names(engine) == TABLES
    engine.dispose()


@pytest.mark.timeout(60)  # a missing migration lock shows as a hang, not an error
def test_concurrent_upgrades_from_several_replicas_migrate_once(empty_database_url):
    failures: list[BaseException] = []

    def replica_starts() -> None:
        try:
            upgrade(empty_database_url)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    replicas = [threading.Thread(target=replica_starts) for _ in range(6)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join()
    assert failures == []
    engine = make_engine(empty_database_url)
    check_schema_current(engine)
    engine.dispose()


# --- revisions ------------------------------------------------------------------------------


def test_revisions_are_listed_oldest_first_and_end_at_head():
    listed = revisions()
    assert listed[0] == "0001_initial"
    assert listed[-1] == head_revision()
    assert len(set(listed)) == len(listed)


def test_an_unknown_target_revision_is_a_caller_error(empty_engine):
    with pytest.raises(ValueError, match="no_such_revision"):
        upgrade(empty_engine, "no_such_revision")
    assert current_revision(empty_engine) is None


def test_the_package_data_ships_every_migration_file():
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["modelfleet"]
    package_root = MIGRATIONS_DIR.parents[1]
    shipped = [
        path.relative_to(package_root).as_posix()
        for path in MIGRATIONS_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "store/migrations/script.py.mako" in shipped
    unshipped = [name for name in shipped if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert unshipped == []


# --- refusing the wrong schema --------------------------------------------------------------


def test_a_current_schema_is_accepted(engine):
    check_schema_current(engine)


def test_a_database_without_schema_is_refused_with_the_command_that_creates_it(empty_engine):
    with pytest.raises(errors.StoreError) as caught:
        check_schema_current(empty_engine)
    assert caught.value.code == "schema_missing"
    assert UPGRADE_COMMAND in str(caught.value)


def test_a_database_behind_is_refused_with_the_command_that_upgrades_it(empty_engine, extra_revision):
    upgrade(empty_engine)
    old_head = head_revision()
    new_head = extra_revision(ADD_TABLE)
    with pytest.raises(errors.StoreError) as caught:
        check_schema_current(empty_engine)
    assert caught.value.code == "schema_behind"
    assert old_head in str(caught.value)
    assert new_head in str(caught.value)
    assert UPGRADE_COMMAND in str(caught.value)
    upgrade(empty_engine)
    check_schema_current(empty_engine)
    assert "test_extra" in table_names(empty_engine)


def test_a_database_from_a_newer_modelfleet_is_refused_and_not_migrated(engine):
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999_future'"))
    with pytest.raises(errors.StoreError) as caught:
        check_schema_current(engine)
    assert caught.value.code == "schema_ahead"
    with pytest.raises(errors.StoreError, match="run a newer modelfleet"):
        upgrade(engine)
    assert current_revision(engine) == "0999_future"


def test_the_store_error_is_neither_bad_data_nor_transport():
    assert issubclass(errors.StoreError, errors.ModelfleetError)
    assert not issubclass(errors.StoreError, errors.BadDataError | errors.TransportError)
    assert errors.StoreError("x").code == "store"


# --- one transaction per run ----------------------------------------------------------------


def test_a_revision_that_fails_half_way_leaves_the_database_as_it_was(empty_engine, extra_revision):
    upgrade(empty_engine)
    old_head = head_revision()
    extra_revision(ADD_TABLE_THEN_FAIL)
    with pytest.raises(RuntimeError, match="half way"):
        upgrade(empty_engine)
    assert current_revision(empty_engine) == old_head
    assert "test_extra" not in table_names(empty_engine)


def test_a_failed_first_upgrade_leaves_no_tables(empty_engine, extra_revision):
    extra_revision(ADD_TABLE_THEN_FAIL)
    with pytest.raises(RuntimeError, match="half way"):
        upgrade(empty_engine)
    assert current_revision(empty_engine) is None
    assert table_names(empty_engine) == []


def test_sqlite_migration_refuses_rows_that_break_foreign_keys(tmp_path, extra_revision):
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.db'}")
    upgrade(engine)
    old_head = head_revision()
    extra_revision(ADD_ORPHAN_ROW)
    with pytest.raises(errors.StoreError) as caught:
        upgrade(engine)
    assert caught.value.code == "foreign_key_violation"
    assert current_revision(engine) == old_head
    engine.dispose()


def test_sqlite_foreign_keys_are_on_again_after_a_migration(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.db'}", pool_size=1, max_overflow=0)
    upgrade(engine)
    with engine.connect() as connection:  # the pool's only connection: the one that migrated
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


# --- data carried across revisions ----------------------------------------------------------

DELTA_ROW = (
    "INSERT INTO deltas (base_sha256, target_sha256, {extra}status, sha256, size, target_size, codec, requested_at) "
    "VALUES ('{base}', '{target}', {value}'ready', '{blob}', 10, 100, 'tensor', CURRENT_TIMESTAMP)"
)


def insert_delta(engine, *, format_version=None, blob="c" * 64):
    extra, value = ("format_version, ", f"{format_version}, ") if format_version is not None else ("", "")
    row = DELTA_ROW.format(extra=extra, value=value, base="a" * 64, target="b" * 64, blob=blob)
    with connect(engine) as connection, connection.begin():
        connection.execute(text(row))


def delta_rows(engine):
    keyed = "format_version" in delta_columns(engine)
    query = "SELECT format_version, sha256 FROM deltas" if keyed else "SELECT NULL, sha256 FROM deltas"
    with connect(engine) as connection:
        return sorted(tuple(row) for row in connection.execute(text(query)))


def delta_columns(engine):
    return {column["name"] for column in inspect(engine).get_columns("deltas")}


def test_deltas_built_before_formats_were_kept_apart_are_format_2_and_a_downgrade_keeps_the_newest(empty_engine):
    upgrade(empty_engine, "0005_event_keys")
    insert_delta(empty_engine)
    upgrade(empty_engine, "0006_delta_formats")
    assert delta_rows(empty_engine) == [(2, "c" * 64)], "built with the encoder's default, format 2"
    insert_delta(empty_engine, format_version=1, blob="d" * 64)
    assert delta_rows(empty_engine) == [(1, "d" * 64), (2, "c" * 64)]
    downgrade(empty_engine, "0005_event_keys")
    assert "format_version" not in delta_columns(empty_engine)
    assert delta_rows(empty_engine) == [(None, "c" * 64)], "one row per pair again: the newest format's"
