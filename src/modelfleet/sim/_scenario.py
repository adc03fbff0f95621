"""Scenario files: the fleet, its sensors, its links and what the operator does, in YAML.

A scenario is checked on load; a refusal names the field
(``scenario silent-regression: sites[1].share: Input should be greater than 0``)::

    name: silent-regression
    devices: 200                  # default fleet size (--devices overrides)
    window: 5m                    # one telemetry window = one simulated round
    rounds: 40                    # at most this many windows
    inferences: 40                # per device per window
    hardware: [{name: pi4-rev-b, share: 0.6}, {name: jetson-nano, share: 0.4}]
    sites:
      - {name: plant-a, share: 0.5}
      - {name: plant-c, share: 0.2, temperature: 6, joins: 1h}   # a hot site that comes online later
    sensor:
      gain: 0.97                  # sensitivity at the start (1.0: new)
      aging: [{start: 2h, end: 3h, loss: 0.25}]
    links:
      drop: 0.02                  # chance that one request is lost
      outages: [{start: 1h, end: 1h20m, share: 0.3}]
    power_cuts: {share: 0.1, at: after_download}
    models:
      1.0.0: {gains: [0.85, 1.0, 1.15], temperatures: [-4, 0, 4]}
    timeline:
      - {at: 0m, push: 1.0.0, pin: true}
      - {at: 10m, push: 2.0.0, rollout: {stages: [{percent: 25}, {percent: 100}], gates: [...]}}
      - {when: retrain, push: 3.0.0, rollout: {...}}
    expect: {rollouts: {2.0.0: rolled_back}, retrain: false}

Shipped scenarios live in ``modelfleet/sim/scenarios/`` and load by name.
"""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from modelfleet.agent import CrashPoint
from modelfleet.errors import BadDataError
from modelfleet.rollout import parse_duration, validation_problems

__all__ = [
    "SCENARIOS",
    "Action",
    "Aging",
    "Expectation",
    "Hardware",
    "Links",
    "Outage",
    "PowerCuts",
    "Scenario",
    "Sensor",
    "Site",
    "TrainingData",
    "load_scenario",
    "parse_scenario",
    "scenario_names",
]

SCENARIOS = "scenarios"
"""The package directory holding the shipped scenario files."""
_VERSION = r"^\d+\.\d+\.\d+$"
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
RolloutOutcome = Literal["complete", "rolled_back", "paused", "running"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Part):
    """A hardware revision: its share of the fleet, reported as the device tag ``hw``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    share: float = Field(gt=0)


class Site(_Part):
    """Where devices stand: the tag ``site``, a temperature offset, and when the site comes online."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    share: float = Field(gt=0)
    temperature: float = Field(default=0.0, ge=-40, le=40)
    joins: Duration = timedelta(0)


class Aging(_Part):
    """Sensor sensitivity lost between ``start`` and ``end`` (linear; each device ages at 70-130 % of it)."""

    start: Duration
    end: Duration
    loss: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Aging:
        if self.end <= self.start:
            msg = f"end {self.end} must be after start {self.start}"
            raise ValueError(msg)
        return self


class Sensor(_Part):
    """The sensors' state at the start and how it changes."""

    gain: float = Field(default=1.0, gt=0, le=2)
    gain_spread: float = Field(default=0.02, ge=0, le=0.5)
    noise: float = Field(default=0.0, ge=0, le=2)
    aging: tuple[Aging, ...] = ()


class Outage(_Part):
    """A share of the fleet (chosen by device) loses its link between ``start`` and ``end``."""

    start: Duration
    end: Duration
    share: float = Field(default=1.0, gt=0, le=1)


class Links(_Part):
    """How devices reach the server: lost requests and outage windows."""

    drop: float = Field(default=0.0, ge=0, lt=1)
    outages: tuple[Outage, ...] = ()


class PowerCuts(_Part):
    """A share of the devices loses power at a point of its next install, then boots and resumes."""

    share: float = Field(default=0.0, ge=0, le=1)
    at: CrashPoint = CrashPoint.AFTER_DOWNLOAD


class TrainingData(_Part):
    """What a version is trained on: sensor conditions of its training data (see ``modelfleet.sim``'s signal).

    ``field: true`` trains on labelled readings collected from the fleet's own sensors as they are
    when the version is built (a data collection campaign), instead of the listed conditions.
    """

    field: bool = False
    gains: tuple[float, ...] = Field(default=(1.0,), min_length=1)
    temperatures: tuple[float, ...] = Field(default=(0.0,), min_length=1)
    temperature_sd: float = Field(default=3.0, gt=0, le=20)
    rows: int = Field(default=6000, ge=200, le=200_000)
    hidden: int = Field(default=16, ge=2, le=256)
    alpha: float = Field(default=1e-3, gt=0, le=10)
    quantize: bool = True


class Action(_Part):
    """One operator step, at a time (``at``) or when retraining is requested (``when: retrain``)."""

    at: Duration | None = None
    when: Literal["retrain"] | None = None
    push: str | None = Field(default=None, pattern=_VERSION)
    pin: bool = False
    rollout: dict[str, Any] | None = None
    experiment: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _when_and_what(self) -> Action:
        if (self.at is None) == (self.when is None):
            msg = "give exactly one of at and when"
            raise ValueError(msg)
        if self.push is None:
            msg = "push: every action names the version it pushes (pin, rollout and experiment act on it)"
            raise ValueError(msg)
        if self.rollout is not None and self.experiment is not None:
            msg = "one of rollout and experiment per action"
            raise ValueError(msg)
        return self


class Expectation(_Part):
    """The outcome the scenario is written to show; the run reports whether it held."""

    rollouts: dict[str, RolloutOutcome] = Field(default_factory=dict)
    experiments: dict[str, Literal["winner", "loser", "inconclusive", "stopped"]] = Field(default_factory=dict)
    retrain: bool | None = None


class Scenario(_Part):
    """A simulated fleet, its inputs and links, and the operator's timeline."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    description: str = ""
    devices: int = Field(default=100, ge=1, le=100_000)
    seed: int = 0
    window: Duration = timedelta(minutes=5)
    rounds: int = Field(default=40, ge=1, le=10_000)
    inferences: int = Field(default=40, ge=1, le=10_000)
    labelled: float = Field(default=1.0, ge=0, le=1)
    hardware: tuple[Hardware, ...] = Field(default=(Hardware(name="generic", share=1.0),), min_length=1)
    sites: tuple[Site, ...] = Field(default=(Site(name="plant-a", share=1.0),), min_length=1)
    sensor: Sensor = Field(default_factory=Sensor)
    links: Links = Field(default_factory=Links)
    power_cuts: PowerCuts = Field(default_factory=PowerCuts)
    models: dict[str, TrainingData] = Field(min_length=1)
    timeline: tuple[Action, ...] = Field(min_length=1)
    expect: Expectation = Field(default_factory=Expectation)
    drift: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.window < timedelta(seconds=60):
            msg = "window: at least 60 seconds"
            raise ValueError(msg)
        for index, action in enumerate(self.timeline):
            if action.push not in self.models:
                msg = f"timeline[{index}].push: {action.push} is not in models ({', '.join(self.models)})"
                raise ValueError(msg)
        for version in self.models:
            if not _is_version(version):
                msg = f"models: {version!r} is not a version like 1.2.0"
                raise ValueError(msg)
        return self


def _is_version(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 3 and all(part.isdigit() for part in parts)  # noqa: PLR2004 - MAJOR.MINOR.PATCH


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    """Check a scenario already parsed from YAML.

    Raises:
        BadDataError: ``bad_scenario``, naming each wrong field and why.
    """
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        msg = f"{source}: {validation_problems(exc, 'scenario')}"
        raise BadDataError(msg, code="bad_scenario") from None


def scenario_names() -> list[str]:
    """The names of the shipped scenarios."""
    folder = resources.files("modelfleet.sim") / SCENARIOS
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a shipped scenario by name, or a scenario file.

    Raises:
        BadDataError: ``bad_scenario`` for an unreadable or wrong file, or a name that is not shipped.
    """
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml", ".json"} or path.exists():
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"cannot read scenario {path}: {exc}"
            raise BadDataError(msg, code="bad_scenario") from None
    else:
        source = f"scenario {name_or_path}"
        shipped = resources.files("modelfleet.sim") / SCENARIOS / f"{name_or_path}.yaml"
        if not shipped.is_file():
            msg = f"no scenario named {name_or_path!r}; shipped: {', '.join(scenario_names())}"
            raise BadDataError(msg, code="bad_scenario")
        text = shipped.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{source}: not YAML: {exc}"
        raise BadDataError(msg, code="bad_scenario") from None
    return parse_scenario(data, source)
