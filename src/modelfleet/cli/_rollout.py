"""``modelfleet rollout plan|start|status|watch|approve|pause|resume|abort|rollback``.

The spec is checked locally first (a wrong field is named before anything is
sent), then the server plans it on the fleet as it is now: the number of target
devices and the device-to-device variance the baseline shows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from modelfleet.cli._admin import _JSON, _SERVER, _TOKEN, connect
from modelfleet.cli._console import EXIT_REFUSED, err, out
from modelfleet.cli._render import fmt_number as _fmt
from modelfleet.cli._render import print_json
from modelfleet.rollout import load_spec

__all__ = ["rollout_app"]

rollout_app = typer.Typer(help="Staged rollouts gated by sequential statistics.", no_args_is_help=True)
_SPEC = typer.Argument(..., exists=True, dir_okay=False, help="Rollout spec (YAML or JSON).")
_ID = typer.Argument(..., help="Rollout id (ro-...).")
_FORCE = typer.Option(False, "--force", help="Start even if the plan cannot detect its margins (warned, audited).")


def plan_table(plan: dict[str, Any]) -> Table:
    """Per stage and gate: devices needed vs available, hours, smallest detectable effect, verdict."""
    table = Table(
        title=f"power analysis: {plan['target_devices']} target devices, alpha per gate {plan['gate_alpha']:.2g}"
    )
    for column in ("stage", "gate", "margin", "sd (source)", "needed", "available", "hours", "MDE", "ok"):
        table.add_column(column)
    for gate in plan["gates"]:
        table.add_row(
            str(gate["stage"] + 1),
            gate["metric"],
            _fmt(gate["margin"]),
            f"{_fmt(gate['device_sd'])} ({gate['sd_source']})",
            _fmt(gate["devices_needed"]),
            str(gate["devices_available"]),
            _fmt(gate["hours_needed"], 3),
            _fmt(gate["minimum_detectable_effect"]),
            "[green]yes[/]" if gate["feasible"] else "[red]no[/]",
        )
    return table


@rollout_app.command("plan")
def plan(
    spec_file: Path = _SPEC, as_json: bool = _JSON, server: str | None = _SERVER, token: str | None = _TOKEN
) -> None:
    """Check a spec and show its power analysis; exit 1 when a stage cannot detect its margins."""
    spec = load_spec(spec_file)
    with connect(server, token) as client:
        answer = client.post("/rollouts/plan", spec.canonical())
    if as_json:
        print_json(answer)
    else:
        out.print(plan_table(answer))
        for gate in answer["gates"]:
            if not gate["feasible"]:
                err.print(f"[red]stage {gate['stage'] + 1} {gate['metric']}:[/] {gate['reason']}")
    if not answer["feasible"]:
        raise typer.Exit(EXIT_REFUSED)


@rollout_app.command("start")
def start(
    spec_file: Path = _SPEC, force: bool = _FORCE, as_json: bool = _JSON,
    server: str | None = _SERVER, token: str | None = _TOKEN,
) -> None:  # fmt: skip
    """Create and start a rollout from a spec (refused when the plan cannot detect its margins)."""
    spec = load_spec(spec_file)
    with connect(server, token) as client:
        answer = client.post(f"/rollouts?force={'true' if force else 'false'}", spec.canonical())
    if as_json:
        print_json(answer)
        return
    out.print(f"started rollout [bold]{answer['id']}[/]: {answer['model']} {answer['version']} "
              f"(baseline {answer['baseline_version'] or 'none'}), now {_position(answer)}")  # fmt: skip


def _position(rollout: dict[str, Any]) -> str:
    if rollout["state"] in {"canary", "awaiting_approval", "paused"}:
        return f"{rollout['state']} stage {rollout['stage'] + 1}/{rollout['stages']} at {rollout['percent']:g}%"
    return str(rollout["state"])


def status_view(rollout: dict[str, Any]) -> Group:
    """The rollout's position, each gate's estimate and interval, and the decisions so far."""
    evaluation = rollout.get("last_evaluation") or {}
    head = Text.from_markup(
        f"[bold]{rollout['id']}[/] {rollout['model']} {rollout['baseline_version'] or '-'} -> {rollout['version']}: "
        f"[bold]{_position(rollout)}[/]"
    )
    parts: list[Any] = [head]
    if evaluation.get("reason"):
        parts.append(Text(f"latest look ({evaluation.get('at', '?')}): {evaluation['reason']}"))
    sizes = evaluation.get("cohorts") or {}
    if sizes:
        parts.append(Text("cohorts: " + ", ".join(f"{name} {count}" for name, count in sizes.items())))
    gates = (evaluation.get("evaluation") or {}).get("gates") or []
    if gates:
        table = Table()
        for column in ("gate", "canary", "holdout", "devices (c/h)", "delta", "interval", "p (worse)", "decision"):
            table.add_column(column)
        for g in gates:
            table.add_row(
                f"{g['metric']} (margin {_fmt(g['margin'])})", _fmt(g["treated_mean"]), _fmt(g["holdout_mean"]),
                f"{g['treated_devices']}/{g['holdout_devices']}", _fmt(g["estimate"]),
                f"[{_fmt(g['lower'])}, {_fmt(g['upper'])}]", _fmt(g["degradation_p_value"], 2), g["decision"],
            )  # fmt: skip
        parts.append(table)
    decisions = Table(title="decisions")
    for column in ("at", "by", "event", "to", "reason"):
        decisions.add_column(column)
    for d in rollout.get("decisions") or []:
        decisions.add_row(str(d["at"])[:19], d["actor"], d["event"], d["to_state"], d["reason"][:100])
    parts.append(decisions)
    return Group(*parts)


@rollout_app.command("status")
def status(
    rollout_id: str = _ID, as_json: bool = _JSON, server: str | None = _SERVER, token: str | None = _TOKEN
) -> None:
    """Stage, cohort sizes, each gate's estimate and interval, and every decision so far."""
    with connect(server, token) as client:
        answer = client.get(f"/rollouts/{rollout_id}")
    if as_json:
        print_json(answer)
        return
    out.print(status_view(answer))


@rollout_app.command("watch")
def watch(
    rollout_id: str = _ID,
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between redraws."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Redraw the status until the rollout ends (Ctrl-C stops watching, not the rollout)."""
    with connect(server, token) as client, Live(console=out, auto_refresh=False) as live:
        while True:
            answer = client.get(f"/rollouts/{rollout_id}")
            live.update(status_view(answer), refresh=True)
            if answer["state"] in {"complete", "rolled_back", "aborted"}:
                return
            time.sleep(interval)


def _command(name: str, help_text: str) -> None:
    def command(rollout_id: str = _ID, server: str | None = _SERVER, token: str | None = _TOKEN) -> None:
        with connect(server, token) as client:
            answer = client.post(f"/rollouts/{rollout_id}/{name}")
        out.print(f"{answer['id']}: {_position(answer)}")

    command.__doc__ = help_text
    rollout_app.command(name)(command)


_command("approve", "Approve the next stage of a rollout waiting for it.")
_command("pause", "Freeze a rollout where it is.")
_command("resume", "Resume a paused rollout.")
_command("abort", "Stop a rollout for good; its target returns to the baseline.")
_command("rollback", "Return every target device to the baseline version, now.")
