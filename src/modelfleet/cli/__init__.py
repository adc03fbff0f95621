"""The ``modelfleet`` command line (Typer).

Commands are thin: they parse options, call the library, and render. Every
:class:`~modelfleet.errors.ModelfleetError` becomes one line on stderr naming the
problem and its code, with exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import importlib
import sys

import typer
import typer.core
import typer.main
from typer._click import Command, Context  # typer vendors click: its groups take and return these types

from modelfleet import __version__
from modelfleet.cli._console import run_guarded

__all__ = ["app", "main"]

_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("_demo", "demo"),
    "push": ("_admin", "push"),
    "pin": ("_admin", "pin"),
    "unpin": ("_admin", "unpin"),
    "sim": ("_sim", "sim"),
    "keys": ("_keys", "keys_app"),
    "bundle": ("_bundle", "bundle_app"),
    "server": ("_server", "server_app"),
    "db": ("_db", "db_app"),
    "token": ("_admin", "token_app"),
    "devices": ("_admin", "devices_app"),
    "pins": ("_admin", "pins_app"),
    "enrollment-token": ("_admin", "enrollment_token_app"),
    "agent": ("_agent", "agent_app"),
    "rollout": ("_rollout", "rollout_app"),
    "experiment": ("_experiment", "experiment_app"),
}
"""Command name -> (module of ``modelfleet.cli``, the Typer app or function in it), in help order."""


class _LazyGroup(typer.core.TyperGroup):
    """The root group: imports a command's module only when that command is invoked or its help is shown.

    ``modelfleet agent run`` then loads the agent and none of the server, builder or statistics
    (SQLAlchemy, FastAPI, SciPy, ONNX), which keeps an idle device agent small.
    """

    def list_commands(self, ctx: Context) -> list[str]:  # noqa: ARG002 - click's signature
        return list(_COMMANDS)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:  # noqa: ARG002 - click's signature
        loaded = self.commands.get(cmd_name)
        if loaded is None and cmd_name in _COMMANDS:
            loaded = self.commands[cmd_name] = _load(cmd_name)
        return loaded


def _load(name: str) -> Command:
    """The click command of ``name``, built from its module's Typer app or command function."""
    module, attribute = _COMMANDS[name]
    target = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    if isinstance(target, typer.Typer):
        command: Command = typer.main.get_group(target)  # a group even when it has one command
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


app = typer.Typer(
    name="modelfleet",
    cls=_LazyGroup,
    help="Ship, watch and roll back AI models on fleets of edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
