"""``modelfleet experiment plan|start|status|stop|promote``: A/B, shadow and time-slice experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Group
from rich.table import Table
from rich.text import Text

from modelfleet.cli._admin import _JSON, _SERVER, _TOKEN, connect
from modelfleet.cli._console import EXIT_REFUSED, err, out
from modelfleet.cli._render import fmt_number as _fmt
from modelfleet.cli._render import print_json
from modelfleet.errors import BadDataError
from modelfleet.rollout import ExperimentSpec, validation_problems

__all__ = ["experiment_app"]

experiment_app = typer.Typer(
    help="A/B, shadow and time-slice experiments between model versions, analysed per device.", no_args_is_help=True
)
_SPEC = typer.Argument(..., exists=True, dir_okay=False, help="Experiment spec (YAML or JSON).")
_ID = typer.Argument(..., help="Experiment id (ex-...).")


def load_experiment(path: Path) -> ExperimentSpec:
    """Read and check a spec file; a wrong field is named before anything is sent.

    Raises:
        BadDataError: unreadable file or a wrong spec.
    """
    try:
        return ExperimentSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        msg = f"experiment spec {path} refused: {validation_problems(exc, 'spec')}"
        raise BadDataError(msg, code="bad_experiment_spec") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        msg = f"cannot read experiment spec {path}: {exc}"
        raise BadDataError(msg, code="bad_experiment_spec") from exc


def _lift_cells(lift: dict[str, Any]) -> tuple[str, str]:
    """A lift's metric label and verdict; a guard with a margin names it (analyses stored before had none)."""
    margin = lift.get("margin") or 0.0
    label = lift["metric"] + (" (primary)" if lift["primary"] else "") + (f" (margin {margin:+.0%})" if margin else "")
    better = "within margin" if margin else "better"
    return label, better if lift["better"] else "worse" if lift["worse"] else "-"


def status_view(experiment: dict[str, Any]) -> Group:
    """Per variant: devices, lift and interval per metric, always-valid p-values, the verdict; a shadow's agreement."""
    analysis = experiment.get("analysis") or {}
    head = Text.from_markup(
        f"[bold]{experiment['id']}[/] {experiment['model']} ({experiment['kind']}): [bold]{experiment['state']}[/]"
        f" - {analysis.get('reason', '')}"
    )
    table = Table()
    for column in ("variant", "metric", "devices", "lift", "interval", "relative", "p (adjusted)", "verdict"):
        table.add_column(column)
    for lift in analysis.get("lifts") or []:
        label, verdict = _lift_cells(lift)
        table.add_row(
            lift["variant"], label, str(lift["devices"]), _fmt(lift["estimate"]),
            f"[{_fmt(lift['lower'])}, {_fmt(lift['upper'])}]", _fmt(lift["relative"], 3),
            _fmt(lift["adjusted_p_value"], 2), verdict,
        )  # fmt: skip
    devices = analysis.get("devices") or []
    lines: list[Text | Table] = [head, Text(f"devices per arm: {devices}"), table]
    shadow = analysis.get("shadow")
    if shadow:
        agreement, confidence = shadow["agreement"], shadow["confidence_difference"]
        margin = shadow.get("latency_margin")
        guard = "" if margin is None else f" (the guard lets the candidate measure up to {margin:.0%} slower)"
        lines.append(
            Text(
                f"agreement {_fmt(agreement['estimate'])} [{_fmt(agreement['lower'])}, {_fmt(agreement['upper'])}]"
                f" over {agreement['devices']} devices; confidence difference {_fmt(confidence['estimate'])}"
                f" [{_fmt(confidence['lower'])}, {_fmt(confidence['upper'])}]; latency active"
                f" {_fmt(shadow['active_latency_ms'])} ms, candidate {_fmt(shadow['candidate_latency_ms'])} ms{guard};"
                f" only active right {shadow['discordant']['only_active_correct']},"
                f" only candidate right {shadow['discordant']['only_candidate_correct']}"
            )
        )
    if analysis.get("time_slice"):
        schedule = analysis["time_slice"]
        lines.append(
            Text(f"time slice: {schedule['slots_per_device']} slots of {schedule['slot_seconds']} s per device")
        )
    return Group(*lines)


@experiment_app.command("plan")
def plan(
    spec_file: Path = _SPEC, as_json: bool = _JSON, server: str | None = _SERVER, token: str | None = _TOKEN
) -> None:
    """Devices and duration the experiment needs on the fleet now; exit 1 when it cannot reach its power."""
    spec = load_experiment(spec_file)
    with connect(server, token) as client:
        answer = client.post("/experiments/plan", spec.canonical())
    if as_json:
        print_json(answer)
    else:
        hours = answer["duration"] / 3600
        out.print(f"{spec.kind}: {answer['devices_needed']} devices over {hours:.3g} h; {answer['reason']}")
    if not answer["feasible"]:
        raise typer.Exit(EXIT_REFUSED)


@experiment_app.command("start")
def start(
    spec_file: Path = _SPEC,
    force: bool = typer.Option(False, "--force", help="Start even if the plan cannot reach its power."),
    as_json: bool = _JSON,
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Start an experiment; devices get their variant at their next check-in."""
    spec = load_experiment(spec_file)
    with connect(server, token) as client:
        answer = client.post(f"/experiments?force={'true' if force else 'false'}", spec.canonical())
    if as_json:
        print_json(answer)
        return
    out.print(
        f"started experiment [bold]{answer['id']}[/] on {answer['model']} ({answer['planned_devices']} devices planned)"
    )


@experiment_app.command("status")
def status(
    experiment_id: str = _ID, as_json: bool = _JSON, server: str | None = _SERVER, token: str | None = _TOKEN
) -> None:
    """The analysis now: lifts, intervals and always-valid p-values per variant and metric."""
    with connect(server, token) as client:
        answer = client.get(f"/experiments/{experiment_id}")
    if as_json:
        print_json(answer)
        return
    out.print(status_view(answer))


@experiment_app.command("stop")
def stop(experiment_id: str = _ID, server: str | None = _SERVER, token: str | None = _TOKEN) -> None:
    """Stop an experiment; its devices go back to what pins and rollouts say."""
    with connect(server, token) as client:
        answer = client.post(f"/experiments/{experiment_id}/stop")
    out.print(f"{answer['id']}: {answer['state']}")


@experiment_app.command("promote")
def promote(
    experiment_id: str = _ID,
    version: str | None = typer.Option(None, "--version", help="Promote this variant even without a winner."),
    server: str | None = _SERVER,
    token: str | None = _TOKEN,
) -> None:
    """Ship the winner through the staged rollout the spec's auto_promote section describes."""
    path = f"/experiments/{experiment_id}/promote" + (f"?version={version}" if version else "")
    with connect(server, token) as client:
        answer = client.post(path)
    err.print(f"{answer['id']}: {answer['state']}, {answer['winner']} ships in rollout {answer['rollout_id']}")
