"""The rollout spec: written before start, frozen once started (shared/DESIGN.md §6).

A spec is YAML or JSON. Everything is checked on load, and a refusal names the
field (``stages[1].percent: must be above the previous stage's 25``)::

    model: digits
    version: 2.0.0
    selector: {region: eu}          # device tags; {} targets every device
    holdout_percent: 10             # devices kept on the current version as the control
    alpha: 0.01                     # P(roll back a model that is not worse), all gates and stages
    on_failure: rollback            # or pause
    exposure_windows: 3             # telemetry windows a device needs before it counts
    settle_windows: 1               # windows after a stage starts that nobody counts (installs land)
    lab: {min_devices: 1, min_duration: 10m}
    stages:
      - {percent: 5, min_devices: 20, min_duration: 1h}
      - {percent: 50, min_devices: 100, min_duration: 2h, approval: admin}
      - {percent: 100, min_devices: 100, min_duration: 1h}
    gates:
      - {metric: mean_confidence, margin: 0.02}
      - {metric: error_rate, margin: 0.005}
    hard_triggers: {failure_rate: 0.2, min_failures: 5, crash_loops: 1}
    planning: {device_sd: {mean_confidence: 0.05}}
"""

# ruff: noqa: RUF002 - statistics in mathematical notation

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from modelfleet.errors import BadDataError
from modelfleet.stats import Direction

__all__ = [
    "METRICS",
    "Gate",
    "HardTriggers",
    "LabStage",
    "Metric",
    "RolloutSpec",
    "Stage",
    "load_spec",
    "parse_duration",
    "parse_spec",
    "validation_problems",
]

Metric = Literal["mean_confidence", "error_rate", "fallback_rate", "latency_ms", "accuracy"]
METRICS: dict[str, Direction] = {
    "mean_confidence": "higher_is_better",
    "error_rate": "lower_is_better",
    "fallback_rate": "lower_is_better",
    "latency_ms": "lower_is_better",
    "accuracy": "higher_is_better",
}
"""Every gate metric, computed per device from its telemetry summaries, and which way it improves."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_MAX_DURATION = timedelta(days=90)


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` or a number of seconds, as a timedelta.

    Raises:
        ValueError: anything else, or a duration outside [0, 90 days].
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        msg = f"{value!r} is not a duration (use seconds or a number with s, m, h or d, e.g. '30m')"
        raise ValueError(msg)
    # Bounded in seconds before a timedelta is made: a huge number would overflow timedelta itself.
    if not 0 <= seconds <= _MAX_DURATION.total_seconds():
        msg = f"duration {value!r} must be between 0 and 90 days"
        raise ValueError(msg)
    return timedelta(seconds=seconds)


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(lambda d: d.total_seconds(), return_type=float)
]
Role = Literal["admin", "release-manager"]
_TAG = r"^[A-Za-z0-9_.-]{1,64}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(_Spec):
    """One canary stage: the share of non-holdout target devices treated, and when it may widen."""

    percent: float = Field(gt=0, le=100)
    min_devices: int = Field(default=1, ge=1, le=10_000_000)
    min_duration: Duration = timedelta(0)
    approval: Role | None = None


class LabStage(_Spec):
    """Stage 0 on devices tagged ``lab=true``: golden vectors, latency and memory on real targets."""

    min_devices: int = Field(default=1, ge=1, le=10_000)
    min_duration: Duration = timedelta(0)


class Gate(_Spec):
    """A one-sided comparison of canary with holdout devices on one metric (DESIGN §7)."""

    metric: Metric
    margin: float = Field(ge=0, allow_inf_nan=False)
    direction: Direction | None = None

    @property
    def oriented(self) -> Direction:
        """The direction given, or the metric's natural one."""
        return self.direction or METRICS[self.metric]


class HardTriggers(_Spec):
    """Failures that end a stage without statistics (hawkBit / AWS IoT Jobs style)."""

    failure_rate: float = Field(default=0.2, gt=0, le=1)
    min_failures: int = Field(default=5, ge=1)
    crash_loops: int = Field(default=1, ge=1)


class Planning(_Spec):
    """What the power analysis assumes where the fleet has no data yet."""

    device_sd: dict[Metric, float] = Field(default_factory=dict)
    power: float = Field(default=0.9, gt=0, lt=1)
    window_seconds: int = Field(default=300, ge=1, le=86_400)

    @field_validator("device_sd")
    @classmethod
    def _positive(cls, value: dict[Metric, float]) -> dict[Metric, float]:
        for metric, sd in value.items():
            if not 0 < sd < float("inf"):
                msg = f"device_sd of {metric} must be a positive number, got {sd}"
                raise ValueError(msg)
        return value


class RolloutSpec(_Spec):
    """A staged rollout of one model version against a concurrent holdout."""

    model: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(min_length=1, max_length=128)
    selector: dict[Annotated[str, Field(pattern=_TAG)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    holdout_percent: float = Field(default=10, gt=0, lt=100)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    on_failure: Literal["rollback", "pause"] = "rollback"
    exposure_windows: int = Field(default=3, ge=1, le=1000)
    settle_windows: int = Field(default=1, ge=0, le=100, description="stage windows skipped while installs land")
    min_inferences: int = Field(default=1, ge=1, description="per device window, to count it")
    lab: LabStage | None = None
    stages: tuple[Stage, ...] = Field(min_length=1, max_length=20)
    gates: tuple[Gate, ...] = Field(min_length=1, max_length=20)
    hard_triggers: HardTriggers = Field(default_factory=HardTriggers)
    planning: Planning = Field(default_factory=Planning)

    @model_validator(mode="after")
    def _stages_widen(self) -> RolloutSpec:
        previous = 0.0
        for index, stage in enumerate(self.stages):
            if stage.percent <= previous:
                msg = f"stages[{index}].percent: {stage.percent} must be above the previous stage's {previous}"
                raise ValueError(msg)
            previous = stage.percent
        if previous != 100:  # noqa: PLR2004 - a rollout ends at the whole target
            msg = f"stages: the last stage must reach 100 percent, not {previous}"
            raise ValueError(msg)
        metrics = [gate.metric for gate in self.gates]
        if len(set(metrics)) != len(metrics):
            msg = f"gates: each metric at most once, got {metrics}"
            raise ValueError(msg)
        return self

    def gate_alpha(self) -> float:
        """α of one gate at one stage: the spec's α split over every gate of every stage (Bonferroni).

        Any gate at any stage may roll back, so the family is gates × stages;
        promotion needs every gate (intersection–union) and spends no α.
        """
        return self.alpha / (len(self.gates) * len(self.stages))

    def canonical(self) -> dict[str, Any]:
        """The spec as JSON-ready data, durations in seconds (what the server stores)."""
        return json.loads(self.model_dump_json())  # type: ignore[no-any-return]


def parse_spec(data: object) -> RolloutSpec:
    """Check a spec already parsed from YAML or JSON.

    Raises:
        BadDataError: the spec is wrong; the message names each field and why.
    """
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as exc:
        msg = f"rollout spec refused: {validation_problems(exc, 'spec')}"
        raise BadDataError(msg, code="bad_rollout_spec") from exc


def validation_problems(exc: ValidationError, root: str) -> str:
    """Every problem of a refused document, each with the path of its field (``stages[1].percent: ...``)."""
    return "; ".join(f"{_where(error['loc'], root)}: {error['msg']}" for error in exc.errors())


def _where(location: tuple[int | str, ...], root: str) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or root


def load_spec(path: Path) -> RolloutSpec:
    """Read and check a YAML or JSON spec file.

    Raises:
        BadDataError: unreadable YAML/JSON or a wrong spec.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        msg = f"cannot read rollout spec {path}: {exc}"
        raise BadDataError(msg, code="bad_rollout_spec") from exc
    return parse_spec(data)
