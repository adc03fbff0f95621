"""The root command loads each command's module only when it is used, and still lists them all with their help."""

import subprocess
import sys
import textwrap

import typer
from typer.testing import CliRunner

from modelfleet.cli import _COMMANDS, app

HEAVY = ("numpy", "scipy", "onnx", "onnxruntime", "sklearn", "sqlalchemy", "fastapi", "uvicorn")


def _first_help_line(name: str) -> str:
    module, attribute = _COMMANDS[name]
    target = getattr(__import__(f"modelfleet.cli.{module}", fromlist=[attribute]), attribute)
    text = target.info.help if isinstance(target, typer.Typer) else target.__doc__
    return text.strip().splitlines()[0]


def test_help_lists_every_command_with_its_help_text():
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    for name in _COMMANDS:
        line = next((line for line in lines if line.strip("│ ").startswith(f"{name} ")), None)
        assert line is not None, f"{name} missing from --help"
        assert _first_help_line(name)[:40] in line, line


def test_a_group_with_one_command_stays_a_group():
    shown = CliRunner().invoke(app, ["keys", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "generate" in shown.output
    assert "--install-completion" not in shown.output


def test_an_unknown_command_is_a_usage_error():
    assert CliRunner().invoke(app, ["no-such-command"]).exit_code == 2


def test_the_agent_commands_load_no_server_builder_or_statistics_code():
    probe = f"""
        import sys, typer.main
        from typer._click import Context
        from modelfleet.cli import app
        root = typer.main.get_command(app)
        agent = root.get_command(Context(root), "agent")
        assert agent.get_command(Context(agent), "run") is not None
        assert agent.get_command(Context(agent), "status") is not None
        names = {HEAVY!r} + ("modelfleet.server", "modelfleet.store", "modelfleet.rollout", "modelfleet.stats")
        print(*(name for name in names if name in sys.modules))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(probe)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
