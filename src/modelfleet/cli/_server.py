"""``modelfleet server``: initialise a data directory and run the fleet server under uvicorn.

``modelfleet.server`` (FastAPI, SQLAlchemy, uvicorn: the ``server`` extra) is
imported inside the commands, so the rest of the CLI works where only the
device-side dependencies are installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelfleet.cli._console import err, out
from modelfleet.config import load_settings
from modelfleet.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["app_from_settings", "server_app"]

server_app = typer.Typer(help="Initialise and run the fleet server.", no_args_is_help=True)

# The import string uvicorn's worker processes load the app by; they get the data
# directory and database URL through MODELFLEET_DATA / MODELFLEET_DATABASE_URL.
APP_FACTORY = "modelfleet.cli._server:app_from_settings"

_DATA = typer.Option(..., "--data", file_okay=False, help="The server's data directory.")
_DB = typer.Option(None, "--db", help="Database URL (default: SQLite in the data directory).")


def app_from_settings() -> FastAPI:
    """Build the app in a uvicorn worker from ``MODELFLEET_DATA`` and ``MODELFLEET_DATABASE_URL``."""
    from modelfleet.server import create_app, load_server_config  # noqa: PLC0415 - the server extra is optional

    settings = load_settings()
    if settings.data_dir is None:
        msg = "MODELFLEET_DATA is not set: start the server with `modelfleet server run --data DIR`"
        raise ConfigError(msg, code="no_data_dir")
    config = load_server_config(settings.data_dir)
    if settings.database_url:
        config = config.model_copy(update={"database_url": settings.database_url})
    return create_app(config)


@server_app.command("init")
def init(data: Path = _DATA, db: str | None = _DB) -> None:
    """Create the data directory, database, the bundle signing key the server trusts, and the first admin token."""
    from modelfleet.server import init_server  # noqa: PLC0415 - the server extra is optional

    result = init_server(data, database_url=db)
    out.print(f"initialised {data} (database {result.database})")
    out.print(f"bundle signing key (private, keep off the server): {result.signing_key}")
    out.print(f"trusted public key the server verifies bundles with: {result.trusted_key}")
    out.print(f"first admin token: {result.admin_token}")
    err.print(
        "[bold yellow]warning:[/] the admin token is shown only this once and the server keeps only its hash: "
        "store it now (e.g. export MODELFLEET_TOKEN=...)"
    )


@server_app.command("run")
def run(
    data: Path = _DATA,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="TCP port."),
    db: str | None = _DB,
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes sharing the port."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
) -> None:
    """Serve the device and admin API until interrupted."""
    import uvicorn  # noqa: PLC0415 - the server extra is optional

    from modelfleet.server import load_server_config  # noqa: PLC0415 - the server extra is optional

    load_server_config(data)  # refuse an uninitialised directory here, once, not in every worker
    # Worker processes are spawned, not forked: they learn where the data is from their environment.
    os.environ["MODELFLEET_DATA"] = str(data.resolve())
    if db:
        os.environ["MODELFLEET_DATABASE_URL"] = db
    out.print(f"modelfleet server on http://{host}:{port} ({workers} worker(s), data {data})")
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # uvloop + httptools, named explicitly so a missing extra fails instead of silently
        # falling back. Besides being faster, uvloop sets TCP_NODELAY on every accepted
        # connection. Plain asyncio does so only when the listening socket reports
        # IPPROTO_TCP, and the socket uvicorn binds for --workers N does not (uvicorn
        # issue #3149): every keep-alive response would then wait ~40 ms for a delayed ACK.
        loop="uvloop",
        http="httptools",
        # Devices poll thousands of times a second: a log line per request would cost more
        # than the request. Errors are still logged.
        access_log=access_log,
        server_header=False,
        log_level="info",
    )
