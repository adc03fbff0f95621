"""``modelfleet db``: create or upgrade the server's database schema, and say which revision it is at.

The database is the one ``modelfleet server run`` would use: ``--db``, else
``MODELFLEET_DATABASE_URL``, else the one saved in the data directory. The
server refuses to start on an older schema and names ``modelfleet db upgrade``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from modelfleet.cli._console import out
from modelfleet.config import load_settings

__all__ = ["db_app"]

db_app = typer.Typer(help="Create or upgrade the server's database schema.", no_args_is_help=True)

_DATA = typer.Option(..., "--data", file_okay=False, help="The server's data directory.")
_DB = typer.Option(None, "--db", help="Database URL (default: the one the data directory's server uses).")
_NO_SCHEMA = "no modelfleet schema"


def _database_url(data: Path, db: str | None) -> str:
    from modelfleet.server import load_server_config  # noqa: PLC0415 - the server extra is optional

    return db or load_settings().database_url or load_server_config(data).database_url


@db_app.command("upgrade")
def upgrade(data: Path = _DATA, db: str | None = _DB) -> None:
    """Migrate the database to the schema this modelfleet needs (one transaction; safe to run again)."""
    from modelfleet.store import current_revision, head_revision, make_engine, redact_url  # noqa: PLC0415
    from modelfleet.store import upgrade as upgrade_schema  # noqa: PLC0415 - the server extra is optional

    url = _database_url(data, db)
    engine = make_engine(url)
    try:
        before = current_revision(engine)
        upgrade_schema(engine)
        after = current_revision(engine)
    finally:
        engine.dispose()
    where = redact_url(url)
    if before == after:
        out.print(f"{where} is already at schema {after} (the newest, {head_revision()})")
        return
    out.print(f"upgraded {where} from {before or f'({_NO_SCHEMA})'} to {after}")


@db_app.command("current")
def current(data: Path = _DATA, db: str | None = _DB) -> None:
    """Print the database's schema revision and whether it is the one this modelfleet needs."""
    from modelfleet.store import current_revision, head_revision, make_engine, redact_url, revisions  # noqa: PLC0415

    url = _database_url(data, db)
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    if revision is None:
        state = f"{_NO_SCHEMA}; create it with `modelfleet db upgrade`"
    elif revision == head:
        state = f"schema {revision} (the newest)"
    elif revision in revisions():
        state = f"schema {revision}, behind the newest {head}; run `modelfleet db upgrade`"
    else:
        state = f"schema {revision}, unknown to this modelfleet (newest {head}); run a newer modelfleet"
    out.print(f"{redact_url(url)}: {state}")
