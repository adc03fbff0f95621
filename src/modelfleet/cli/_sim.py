"""``modelfleet sim``: play a scenario on a simulated fleet of real agents against a real server."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path

import typer

from modelfleet.cli._console import out
from modelfleet.sim import decision_lines, load_scenario, run_scenario, scenario_names

__all__ = ["sim"]


def sim(
    scenario: str = typer.Option(..., "--scenario", help="A shipped scenario's name or a scenario YAML file."),
    devices: int | None = typer.Option(None, "--devices", min=1, help="Fleet size (default: the scenario's)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every random draw (default: the scenario's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Keep the server's data here (default: a temp dir)."),
) -> None:
    """Run a fleet scenario (shipped: see --scenario list) and report whether its expected outcome held."""
    if scenario == "list":
        out.print("\n".join(scenario_names()))
        return
    loaded = load_scenario(scenario)
    size = devices or loaded.devices

    def note(at: datetime, text: str) -> None:
        if not as_json:
            out.print(f"[dim]{at.strftime('%H:%M')}[/]  {text}")

    with tempfile.TemporaryDirectory(prefix="modelfleet-sim-") as scratch:
        root = workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        outcome, fleet = run_scenario(loaded, size, root, seed=seed, on_note=note)
        try:
            fleet.close()
        finally:
            fleet.stop_server()
    if as_json:
        typer.echo(json.dumps(outcome.as_dict(), indent=2, default=str))
    else:
        for version, rollout in outcome.rollouts.items():
            out.print(f"\nrollout of {version} ({rollout['id']}): {rollout['state']}")
            for line in decision_lines(rollout):
                out.print(line, highlight=False, soft_wrap=True)
        out.print()
        for name, held in outcome.expectations.items():
            out.print(f"{'[green]OK[/]  ' if held else '[red]FAILED[/]'} {name}")
        out.print(
            f"{size} devices, {len(outcome.rounds)} windows; summaries {outcome.summaries_sent} sent, "
            f"{outcome.summaries_stored} stored; {outcome.power_cuts} power cuts, {outcome.failed_steps} failed steps"
        )
    if not outcome.ok:
        raise typer.Exit(1)
