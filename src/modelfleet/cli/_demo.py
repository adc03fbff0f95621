"""``modelfleet demo``: a simulated fleet catches a silently worse model, retrains on drift, ships the fix.

It plays the shipped ``demo`` scenario (``modelfleet/sim/scenarios/demo.yaml``)
on a real server (SQLite, uvicorn on loopback) and a fleet of real agents on a
simulated clock: train and sign v1 and pin it; build v2, which scores better
offline but worse in the warm plants, and stage it behind label-free gates,
which roll it back; let the sensors age until the drift monitor posts
``retrain.requested`` to a webhook the demo listens on; train v3 on field
readings and stage it to 100 %. Then it writes an HTML report and leaves the
server up. Every number printed is computed by this run.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import typer
from rich.rule import Rule

from modelfleet.cli._console import out
from modelfleet.sim import Outcome, Round, Scenario, decision_lines, load_scenario, run_scenario, write_report

__all__ = ["demo"]

_QUICK_DEVICES = 120


def _quick(scenario: Scenario) -> Scenario:
    """A smaller fleet, same timeline (the tests run this)."""
    return scenario.model_copy(update={"devices": _QUICK_DEVICES})


def _note(at: datetime, text: str) -> None:
    out.print(f"[dim]{at.strftime('%H:%M')}[/]  {text}")


def _progress(record: Round) -> None:
    if record.index % 6:
        return
    parts = [
        f"{version} {v.devices} dev, true acc {v.true_accuracy:.3f}, est {v.estimated_accuracy:.3f}"
        for version, v in record.versions.items()
        if v.true_accuracy is not None and v.estimated_accuracy is not None
    ]
    drift = f"; drifting {record.drift_share:.0%}" if record.drift_share is not None else ""
    if parts:
        stamp = (record.at + timedelta(minutes=5)).strftime("%H:%M")
        out.print(f"[dim]{stamp}  window: {'; '.join(parts)}; sensor gain {record.gain:.2f}{drift}[/]")


def _gate_caught(outcome: Outcome, version: str) -> bool:
    rollout = outcome.rollouts.get(version)
    if rollout is None or rollout["state"] != "rolled_back":
        return False
    for decision in rollout["decisions"]:
        gates = decision.get("detail", {}).get("evaluation", {}).get("gates", [])
        if decision["event"] == "rollback" and any(g["decision"] == "rollback" for g in gates):
            return True
    return False


def _delivery_lines(outcome: Outcome) -> list[str]:
    """How each version reached the fleet: installs by delta, and the download bytes they saved."""
    lines = []
    for entry in outcome.deliveries:
        if not entry["installs"]:
            continue
        share = entry["downloaded_bytes"] / entry["bundle_bytes"] if entry["bundle_bytes"] else 1.0
        lines.append(
            f"downloads of {entry['version']}: {entry['installs']} installs, {entry['by_delta']} by delta; "
            f"{entry['downloaded_bytes'] / 1e6:.2f} MB over the links instead of {entry['bundle_bytes'] / 1e6:.2f} MB "
            f"({share:.0%})"
        )
    return lines


def _checks(outcome: Outcome) -> dict[str, bool]:
    return {
        "2.0.0 rolled back by a label-free gate": _gate_caught(outcome, "2.0.0"),
        "retrain.requested received by the demo's webhook": any(
            e.get("version") == "1.0.0" for e in outcome.retrain_events
        ),
        "3.0.0 complete (stable)": outcome.rollout_state("3.0.0") == "complete" and outcome.stable == "3.0.0",
        "every device runs a working model": not outcome.without_model,
        "summaries acknowledged = summaries stored": outcome.summaries_sent == outcome.summaries_stored,
    }


def demo(
    workdir: Path = typer.Option(Path("modelfleet-demo"), "--workdir", help="Server data, bundles and the report."),
    quick: bool = typer.Option(False, "--quick", help=f"A fleet of {_QUICK_DEVICES} devices."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop the server at the end instead of leaving it up."),
    devices: int | None = typer.Option(None, "--devices", min=40, help="Fleet size (default: the scenario's)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every random draw (default: the scenario's)."),
) -> None:
    """Simulated fleet: a silent regression caught by label-free gates, drift-triggered retraining, a clean rollout."""
    started = time.monotonic()
    scenario = load_scenario("demo")
    if quick:
        scenario = _quick(scenario)
    size = devices or scenario.devices
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    out.print(Rule("[bold]modelfleet demo", align="left"))
    out.print(scenario.description.strip())
    out.print(
        f"\n{size} simulated devices, each the real agent (own model store, ONNX Runtime Predictor, outbox) "
        "talking HTTP to a real server on loopback; one telemetry window (5 min of fleet time) per round.\n"
    )
    outcome, fleet = run_scenario(scenario, size, workdir, seed=seed, on_note=_note, on_round=_progress)
    try:
        fleet.close()
        for version in ("2.0.0", "3.0.0"):
            rollout = outcome.rollouts.get(version)
            if rollout is None:
                continue
            out.print(Rule(f"rollout of {version} ({rollout['id']}): {rollout['state']}", align="left"))
            for line in decision_lines(rollout):
                out.print(line, highlight=False, soft_wrap=True)
        report = write_report(
            outcome,
            workdir / "report.html",
            title="modelfleet demo",
            intro=" ".join(scenario.description.split()),
        )
        checks = _checks(outcome)
        out.print(Rule("outcome", align="left"))
        for name, held in checks.items():
            out.print(f"{'[green]OK[/]  ' if held else '[red]FAILED[/]'} {name}")
        out.print(
            f"summaries: {outcome.summaries_sent} acknowledged to devices, {outcome.summaries_stored} stored; "
            f"{len(outcome.rounds)} windows ({len(outcome.rounds) * 5 // 60} h {len(outcome.rounds) * 5 % 60} min "
            f"of fleet time) in {time.monotonic() - started:.0f} s"
        )
        for line in _delivery_lines(outcome):
            out.print(line)
        out.print(f"report: {report.resolve()}")
        if not all(checks.values()):
            raise typer.Exit(1)
        if not no_serve:
            out.print(
                f"dashboard: {fleet.server.dashboard_url} (sign in with the read-only token "
                f"{fleet.server.viewer_token()})"
            )
            out.print(
                f"API: {fleet.server.url}/docs, admin token {fleet.server.admin_token}; "
                f"e.g. curl -H 'Authorization: Bearer {fleet.server.admin_token}' {fleet.server.url}/v1/admin/rollouts"
            )
            out.print("Ctrl-C stops it.")
            fleet.server.serve_until_interrupted()
    finally:
        fleet.stop_server()
