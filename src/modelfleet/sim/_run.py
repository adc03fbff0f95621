"""Run a scenario: train and sign its versions, play its timeline on a :class:`Fleet`, report the outcome.

The runner plays the operator: at each action's time (or when the drift monitor
asks for retraining of the stable version) it builds the version, pushes it, and
pins it or starts its rollout. It stops when the timeline is played out and
every rollout has ended (or after the scenario's rounds). Everything in the
:class:`Outcome` is read from the run: the server's rollouts and decisions, the
retrain events the webhook received, the devices' own tallies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.sim._fleet import Fleet, Round
from modelfleet.sim._scenario import Action, Scenario
from modelfleet.sim._signal import AMPLITUDE_FEATURES, sensor_readings
from modelfleet.sim._training import MODEL, BuiltVersion, Readings, build_version

__all__ = ["Outcome", "run_scenario"]

log = logging.getLogger(__name__)

_TERMINAL = frozenset({"complete", "rolled_back", "aborted"})
_FIELD_DEVICES = 60
_SETTLE_ROUNDS = 4
_FIELD_ROWS = 8000 // _FIELD_DEVICES


@dataclass(slots=True)
class Outcome:
    """What a scenario run did and whether its expectations held."""

    scenario: str
    devices: int
    seed: int
    rounds: list[Round]
    notes: list[tuple[datetime, str]]
    built: dict[str, BuiltVersion]
    rollouts: dict[str, dict[str, Any]]
    retrain_events: list[dict[str, Any]]
    without_model: list[str]
    summaries_sent: int
    summaries_stored: int
    power_cuts: int
    failed_steps: int
    stable: str | None
    window_s: int
    expectations: dict[str, bool] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # per version: installs, by delta, bytes

    @property
    def ok(self) -> bool:
        """Every expectation held."""
        return all(self.expectations.values())

    def rollout_state(self, version: str) -> str | None:
        """The final state of ``version``'s rollout."""
        rollout = self.rollouts.get(version)
        return None if rollout is None else str(rollout["state"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``modelfleet sim --json``)."""
        return {
            "scenario": self.scenario,
            "devices": self.devices,
            "seed": self.seed,
            "ok": self.ok,
            "expectations": self.expectations,
            "rounds": len(self.rounds),
            "fleet_seconds": len(self.rounds) * self.window_s,
            "stable": self.stable,
            "rollouts": {
                version: {
                    "id": r["id"],
                    "state": r["state"],
                    "stage": r["stage"],
                    "decisions": [
                        {
                            "at": d["at"],
                            "event": d["event"],
                            "to": d["to_state"],
                            "stage": d["stage"],
                            "reason": d["reason"],
                        }
                        for d in r["decisions"]
                    ],
                }
                for version, r in self.rollouts.items()
            },
            "experiments": {
                version: {"id": e["id"], "kind": e["kind"], "state": e["state"], "analysis": e["analysis"]}
                for version, e in self.experiments.items()
            },
            "built": {
                v: {"accuracy": b.accuracy, "int8_parity": b.parity, "bytes": b.size} for v, b in self.built.items()
            },
            "retrain_events": len(self.retrain_events),
            "without_model": len(self.without_model),
            "summaries": {"sent": self.summaries_sent, "stored": self.summaries_stored},
            "deliveries": self.deliveries,
            "power_cuts": self.power_cuts,
            "failed_steps": self.failed_steps,
            "timeline": [{"at": at.isoformat(), "note": text} for at, text in self.notes],
        }


class _Operator:
    """Plays the scenario's timeline against the fleet."""

    def __init__(self, fleet: Fleet, scenario: Scenario, workdir: Path) -> None:
        self.fleet = fleet
        self.scenario = scenario
        self.workdir = workdir
        self.built: dict[str, BuiltVersion] = {}
        self.pending = list(scenario.timeline)
        self.stable: str | None = None
        self._release = 0

    def due(self, elapsed: float, retrain_for: set[str], rolling: bool) -> list[Action]:
        """Actions whose time came, or that wait for a retrain request of the stable version (and no rollout)."""
        ready = []
        for action in list(self.pending):
            timed = action.at is not None and action.at.total_seconds() <= elapsed
            retrain = (
                action.when == "retrain" and not rolling and self.stable is not None and self.stable in retrain_for
            )
            if timed or retrain:
                ready.append(action)
                self.pending.remove(action)
        return ready

    def act(self, action: Action) -> None:
        version = action.push
        if version is None:  # checked on load; keeps mypy sure
            return
        if action.when == "retrain":
            self.fleet.note(f"retraining: building {version} on labelled readings collected from the field")
        built = self._build(version)
        self.fleet.push(built.path, version)
        if action.pin:
            self.fleet.pin(version)
            self.stable = version
        spec = action.rollout if action.rollout is not None else action.experiment
        if action.experiment is not None and "kind" in action.experiment and self.stable is not None:
            self.fleet.start_experiment(self.stable, version, action.experiment)
        elif spec is not None:
            self.fleet.start_rollout(version, spec)

    def _build(self, version: str) -> BuiltVersion:
        training = self.scenario.models[version]
        self._release += 1
        data = self.field_readings() if training.field else None
        built = build_version(
            version,
            self._release,
            training,
            [self.fleet.server.signing_key],
            self.workdir / "bundles",
            parent=self.stable,
            seed=self.scenario.seed + self._release,
            data=data,
        )
        parity = f", INT8 top-1 agreement with float {built.parity:.3f}" if built.parity is not None else ""
        self.fleet.note(f"built and signed {version}: validation accuracy {built.accuracy:.3f}{parity}")
        self.built[version] = built
        return built

    def field_readings(self) -> Readings:
        """Labelled readings from a sample of online devices under their sensors' current state."""
        rng = np.random.default_rng(self.scenario.seed + 17)
        online = [d for d in self.fleet.devices if d.joined(self.fleet.elapsed)]
        picks = rng.choice(len(online), size=min(_FIELD_DEVICES, len(online)), replace=False)
        loss = self.fleet.gain_loss()
        parts = [sensor_readings(rng, _FIELD_ROWS, online[i].signal(loss)) for i in picks]
        x, y = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        # The training recipe augments sensor gain by +-15 %, so the model keeps up as the sensors go on aging.
        x[:, :AMPLITUDE_FEATURES] *= rng.uniform(0.85, 1.15, (len(y), 1)).astype(np.float32)
        return x, y

    def settled(self, last: Round) -> bool:
        timed_left = any(a.at is not None for a in self.pending)
        running = any(state not in _TERMINAL for state in last.rollouts.values())
        experimenting = any(self.fleet.experiment(v)["state"] == "running" for v in self.fleet.experiments)
        return not timed_left and not running and not experimenting


def run_scenario(
    scenario: Scenario,
    devices: int,
    workdir: Path,
    *,
    seed: int | None = None,
    on_note: Callable[[datetime, str], None] | None = None,
    on_round: Callable[[Round], None] | None = None,
    fleet_ready: Callable[[Fleet], None] | None = None,
) -> tuple[Outcome, Fleet]:
    """Play ``scenario`` on ``devices`` real agents; the outcome and the fleet (its server still up).

    The caller closes the fleet (``fleet.close()``, ``fleet.stop_server()``).
    """
    fleet = Fleet(scenario, devices, workdir, seed=seed, on_note=on_note)
    if fleet_ready is not None:
        fleet_ready(fleet)
    operator = _Operator(fleet, scenario, workdir)
    waited_for_retrain = 0
    try:
        for _ in range(scenario.rounds):
            requested = {str(e.get("version")) for e in fleet.retrain_events}
            states = fleet.log.rounds[-1].rollouts.values() if fleet.log.rounds else ()
            rolling = any(state not in _TERMINAL for state in states)
            for action in operator.due(fleet.elapsed, requested, rolling):
                operator.act(action)
            last = fleet.round()
            for version, state in last.rollouts.items():
                if state == "complete" and operator.stable != version:
                    operator.stable = version
            if on_round is not None:
                on_round(last)
            if operator.settled(last):
                retrain_left = any(a.when == "retrain" for a in operator.pending)
                if not retrain_left or waited_for_retrain > scenario.rounds:
                    break
                waited_for_retrain += 1
        _settle(fleet, operator.stable)
    except BaseException:
        fleet.close()
        fleet.stop_server()
        raise
    return _outcome(fleet, operator, scenario, devices), fleet


def _settle(fleet: Fleet, stable: str | None) -> None:
    """A few more windows, until every online device runs the stable version (devices follow at their next poll)."""
    for _ in range(_SETTLE_ROUNDS):
        last = fleet.round()
        if stable is None or set(last.running) == {stable}:
            return


def _outcome(fleet: Fleet, operator: _Operator, scenario: Scenario, devices: int) -> Outcome:
    rollouts = {version: fleet.rollout(version) for version in fleet.rollouts}
    last = fleet.log.rounds[-1]
    outcome = Outcome(
        scenario=scenario.name,
        devices=devices,
        seed=fleet.seed,
        rounds=fleet.log.rounds,
        notes=fleet.log.notes,
        built=operator.built,
        rollouts=rollouts,
        retrain_events=list(fleet.retrain_events),
        without_model=fleet.without_model(),
        summaries_sent=fleet.summaries_sent(),
        summaries_stored=fleet.summaries_stored(),
        power_cuts=last.power_cuts,
        failed_steps=last.failed_steps,
        stable=operator.stable,
        window_s=fleet.window,
    )
    outcome.experiments = {version: fleet.experiment(version) for version in fleet.experiments}
    outcome.deliveries = fleet.server.deliveries(MODEL)
    for version, verdict in scenario.expect.experiments.items():
        found = (outcome.experiments.get(version) or {}).get("analysis", {}).get("verdict")
        outcome.expectations[f"experiment of {version}: {verdict}"] = found == verdict
    for version, expected in scenario.expect.rollouts.items():
        state = outcome.rollout_state(version)
        held = (state is not None and state not in _TERMINAL) if expected == "running" else state == expected
        outcome.expectations[f"rollout {version} {expected}"] = held
    if scenario.expect.retrain is not None:
        outcome.expectations[f"retrain requested: {scenario.expect.retrain}"] = (
            bool(outcome.retrain_events) == scenario.expect.retrain
        )
    outcome.expectations["every online device runs a model"] = not outcome.without_model
    return outcome
