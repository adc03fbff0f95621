"""The ``modelfleet`` command line (Typer).

Commands are thin: they parse options, call the library, and render. Every
:class:`~modelfleet.errors.ModelfleetError` becomes one line on stderr naming the
problem and its code, with exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import sys

import typer

from modelfleet import __version__
from modelfleet.cli._admin import devices_app, enrollment_token_app, pin, pins_app, push, token_app, unpin
from modelfleet.cli._agent import agent_app
from modelfleet.cli._bundle import bundle_app
from modelfleet.cli._console import run_guarded
from modelfleet.cli._db import db_app
from modelfleet.cli._demo import demo
from modelfleet.cli._experiment import experiment_app
from modelfleet.cli._keys import keys_app
from modelfleet.cli._rollout import rollout_app
from modelfleet.cli._server import server_app
from modelfleet.cli._sim import sim

__all__ = ["app", "main"]

app = typer.Typer(
    name="modelfleet",
    help="Ship, watch and roll back AI models on fleets of edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_app, name="keys")
app.add_typer(bundle_app, name="bundle")
app.command("demo")(demo)
app.add_typer(server_app, name="server")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.command("push")(push)
app.add_typer(devices_app, name="devices")
app.command("pin")(pin)
app.add_typer(pins_app, name="pins")
app.command("unpin")(unpin)
app.add_typer(enrollment_token_app, name="enrollment-token")
app.add_typer(agent_app, name="agent")
app.add_typer(rollout_app, name="rollout")
app.add_typer(experiment_app, name="experiment")
app.command("sim")(sim)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelfleet {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Ship, watch and roll back AI models on fleets of edge devices."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_guarded(app))
