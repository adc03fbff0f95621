"""`modelfleet db upgrade|current` as an operator runs them: a real process, SQLite and PostgreSQL databases."""

import subprocess
import sys

import pytest

from modelfleet.server import init_server
from modelfleet.store import current_revision, downgrade, head_revision, make_engine, revisions


def modelfleet(*args):
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args], capture_output=True, text=True, check=False, timeout=120
    )


def revision_of(url):
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


@pytest.fixture
def data(tmp_path):
    """An initialised data directory (its own SQLite database at the newest schema)."""
    init_server(tmp_path / "data")
    return tmp_path / "data"


def test_upgrade_creates_the_schema_of_an_empty_database_and_says_from_and_to(data, empty_database_url):
    before = modelfleet("db", "current", "--data", str(data), "--db", empty_database_url)
    assert before.returncode == 0, before.stderr
    assert "no modelfleet schema" in before.stdout

    upgraded = modelfleet("db", "upgrade", "--data", str(data), "--db", empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from (no modelfleet schema) to {head_revision()}" in upgraded.stdout
    assert revision_of(empty_database_url) == head_revision()

    after = modelfleet("db", "current", "--data", str(data), "--db", empty_database_url)
    assert f"schema {head_revision()} (the newest)" in after.stdout


def test_upgrading_a_current_database_again_changes_nothing_and_says_so(data, database_url):
    again = modelfleet("db", "upgrade", "--data", str(data), "--db", database_url)
    assert again.returncode == 0, again.stderr
    assert f"already at schema {head_revision()}" in again.stdout
    assert revision_of(database_url) == head_revision()


def test_upgrade_without_db_uses_the_database_of_the_data_directory(data):
    url = f"sqlite:///{data / 'modelfleet.db'}"
    downgrade(url, "base")
    behind = modelfleet("db", "current", "--data", str(data))
    assert "no modelfleet schema" in behind.stdout
    upgraded = modelfleet("db", "upgrade", "--data", str(data))
    assert upgraded.returncode == 0, upgraded.stderr
    assert str(data / "modelfleet.db") in upgraded.stdout
    assert revision_of(url) == head_revision()


@pytest.mark.parametrize("start", revisions()[:-1])
def test_upgrade_from_every_earlier_revision_names_it(data, database_url, start):
    downgrade(database_url, start)
    behind = modelfleet("db", "current", "--data", str(data), "--db", database_url)
    assert f"behind the newest {head_revision()}" in behind.stdout
    upgraded = modelfleet("db", "upgrade", "--data", str(data), "--db", database_url)
    assert f"from {start} to {head_revision()}" in upgraded.stdout
    assert revision_of(database_url) == head_revision()


def test_a_database_url_password_is_never_printed(data, pg_server_url):
    url = pg_server_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    shown = modelfleet("db", "current", "--data", str(data), "--db", url)
    assert "s3cret-pw" not in shown.stdout + shown.stderr
    assert "***" in shown.stdout + shown.stderr


def test_an_uninitialised_directory_without_db_is_refused_with_what_to_run(tmp_path):
    refused = modelfleet("db", "upgrade", "--data", str(tmp_path / "nothing-here"))
    assert refused.returncode == 1
    assert "modelfleet server init" in refused.stderr
    assert "[not_initialized]" in refused.stderr
