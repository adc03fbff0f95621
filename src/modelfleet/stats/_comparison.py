"""Our sequential gate and its baselines on the same simulated device streams, run for run.

:func:`compare_gates` draws each rollout once and hands the same devices, in
the same order, to four procedures (:mod:`modelfleet.stats._baselines`):

- ``sequential``: the production gate, :func:`confidence_sequence_path` and
  :func:`decision_codes`, at every look until it decides or the run ends;
- ``fixed_horizon``: the same gate rule on the Welch z-interval, read once at
  the devices planned for one look (:func:`fixed_horizon_devices`); when
  neither rule holds there it is inconclusive;
- ``naive_peeking``: the same z-interval and rule at every look, like ours;
- ``threshold``: a hawkBit/AWS failure-threshold gate on a failure metric of
  the same devices, which promotes when its stage ends without an abort.

A run's decision is the first look at which a rule held; rollback wins ties,
as in the gate. Randomness only from the injected ``numpy.random.Generator``.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from modelfleet.stats._arrays import BoolArray, FloatArray, IntArray, check_alpha
from modelfleet.stats._baselines import fixed_horizon_bounds, threshold_gate_aborts
from modelfleet.stats._gate import CONTINUE, PROMOTE, ROLLBACK, Decision, Direction, decision_codes
from modelfleet.stats._scipy import beta_ppf
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM, confidence_sequence_path
from modelfleet.stats._simulate import RolloutScenario, simulate_device_values

__all__ = ["GateComparison", "GateOutcome", "ThresholdGate", "clopper_pearson", "compare_gates"]

_CODES: dict[Decision, int] = {"continue": CONTINUE, "rollback": ROLLBACK, "promote": PROMOTE}


@dataclass(frozen=True, slots=True)
class ThresholdGate:
    """A hawkBit ``errorCondition`` / AWS ``abortConfig`` gate, as :func:`threshold_gate_aborts` applies it.

    Attributes:
        threshold: canary failure share above which it aborts (rolls back).
        min_treated: canaries that must have reported first (AWS ``minNumberOfExecutedThings``).
        stage_devices: compared devices after which, never having aborted, it promotes.
        watched: the failure metric of the same devices it watches, drawn on the gated stream's
            devices and assignment (its ``devices`` and ``treatment_probability`` are ignored);
            ``None`` watches the gated metric itself.
        direction: which way the watched metric improves.
    """

    threshold: float
    min_treated: int
    stage_devices: int
    watched: RolloutScenario | None = None
    direction: Direction = "lower_is_better"


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """What one procedure decided in each run.

    Attributes:
        decision: CONTINUE (nothing by ``horizon_devices``), ROLLBACK or PROMOTE per run.
        decision_devices: compared devices seen at the decision, −1 where there was none.
        horizon_devices: devices after which the procedure stops looking.
    """

    decision: IntArray
    decision_devices: IntArray
    horizon_devices: int

    def rate(self, decision: Decision) -> float:
        """Return the share of runs that ended in ``decision``."""
        return float(np.mean(self.decision == _CODES[decision]))

    def count(self, decision: Decision) -> int:
        """Return the number of runs that ended in ``decision``."""
        return int(np.count_nonzero(self.decision == _CODES[decision]))

    def devices_spent(self) -> IntArray:
        """Return, per run, the devices seen until the decision, or the horizon when there was none."""
        return np.where(self.decision_devices >= 0, self.decision_devices, self.horizon_devices)

    def devices_to(self, decision: Decision) -> FloatArray:
        """Return, per run, the devices seen until ``decision``, +inf where the run ended otherwise."""
        hit = self.decision == _CODES[decision]
        return np.where(hit, self.decision_devices.astype(np.float64), np.inf)


@dataclass(frozen=True, slots=True)
class GateComparison:
    """The four procedures' outcomes on the same runs."""

    sequential: GateOutcome
    fixed_horizon: GateOutcome
    naive_peeking: GateOutcome
    threshold: GateOutcome

    def outcomes(self) -> dict[str, GateOutcome]:
        """Return the outcomes by procedure name, ours first."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the exact (Clopper–Pearson) two-sided interval for a binomial share.

    Clopper & Pearson (1934), Biometrika 26(4): the bounds are Beta quantiles,
    so the interval covers the true share with probability ≥ ``confidence``.
    """
    if trials < 1 or not 0 <= successes <= trials or not 0.0 < confidence < 1.0:
        msg = "need 0 <= successes <= trials, trials >= 1 and confidence in (0, 1)"
        raise ValueError(msg)
    tail = (1.0 - confidence) / 2.0
    lower = 0.0 if successes == 0 else beta_ppf(tail, successes, trials - successes + 1)
    upper = 1.0 if successes == trials else beta_ppf(1.0 - tail, successes + 1, trials - successes)
    return lower, upper


def _first(codes: IntArray) -> tuple[IntArray, IntArray]:
    """Return each row's first non-continue code and the devices seen then (−1 when none)."""
    decided = codes != CONTINUE
    first = np.argmax(decided, axis=-1)
    any_decided = decided.any(axis=-1)
    decision = np.where(any_decided, np.take_along_axis(codes, first[:, None], axis=-1)[:, 0], CONTINUE)
    return decision.astype(np.int64), np.where(any_decided, first + 1, -1).astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Design:
    """Everything but the scenario that :func:`compare_gates` runs with."""

    margin: float
    direction: Direction
    planned_devices: int
    fixed_devices: int
    threshold_gate: ThresholdGate
    alpha: float
    look_every: int
    min_devices_per_arm: int


def _compare_batch(
    rng: np.random.Generator, scenario: RolloutScenario, runs: int, design: _Design
) -> tuple[tuple[IntArray, IntArray], ...]:
    """Simulate ``runs`` streams and return (decision, devices) per procedure."""
    values, treated = simulate_device_values(rng, scenario, runs)
    looks: BoolArray = np.zeros(scenario.devices, dtype=np.bool_)
    looks[design.look_every - 1 :: design.look_every] = True
    looks[-1] = True
    path = confidence_sequence_path(
        values,
        treated,
        treatment_probability=scenario.treatment_probability,
        planned_devices=design.planned_devices,
        alpha=design.alpha,
        min_devices_per_arm=design.min_devices_per_arm,
    )
    sequential = decision_codes(path.lower, path.upper, design.margin, design.direction)
    lower, upper = fixed_horizon_bounds(
        values, treated, alpha=design.alpha, min_devices_per_arm=design.min_devices_per_arm
    )
    naive = decision_codes(lower, upper, design.margin, design.direction)
    fixed = np.full_like(naive, CONTINUE)
    fixed[:, design.fixed_devices - 1] = naive[:, design.fixed_devices - 1]
    gate = design.threshold_gate
    watched = values
    if gate.watched is not None:
        watched_scenario = dataclasses.replace(
            gate.watched, devices=scenario.devices, treatment_probability=scenario.treatment_probability
        )
        watched, _ = simulate_device_values(rng, watched_scenario, runs, treated=treated)
    aborts = threshold_gate_aborts(
        watched, treated, threshold=gate.threshold, min_treated=gate.min_treated, direction=gate.direction
    )
    threshold = np.where(looks & aborts, ROLLBACK, CONTINUE)
    threshold[:, gate.stage_devices :] = CONTINUE
    threshold[:, gate.stage_devices - 1] = np.where(aborts[:, gate.stage_devices - 1], ROLLBACK, PROMOTE)
    return (
        _first(np.where(looks, sequential, CONTINUE)),
        _first(fixed),
        _first(np.where(looks, naive, CONTINUE)),
        _first(threshold.astype(np.int64)),
    )


def compare_gates(
    rng: np.random.Generator,
    scenario: RolloutScenario,
    *,
    runs: int,
    margin: float,
    direction: Direction,
    planned_devices: int,
    fixed_devices: int,
    threshold_gate: ThresholdGate,
    alpha: float = 0.01,
    look_every: int = 1,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
    batch_runs: int = 256,
) -> GateComparison:
    """Run our gate and the three baselines on the same ``runs`` simulated rollouts of one stage.

    Args:
        rng: the only source of randomness.
        scenario: the stage; ``scenario.devices`` is the horizon of the looking procedures.
        runs: number of independent rollouts.
        margin: non-inferiority margin of the gate.
        direction: which way the gated metric improves.
        planned_devices: the sequential plan (:func:`plan_stage`); tunes the boundary.
        fixed_devices: the single look of the fixed-horizon test (:func:`fixed_horizon_devices`).
        threshold_gate: the failure-threshold gate and the metric it watches.
        alpha: each side's α, for our gate and the z-tests alike.
        look_every: devices between looks of the looking procedures (1 = after every device).
        min_devices_per_arm: burn-in of the interval-based procedures.
        batch_runs: runs simulated together; memory grows as about 1 kB × batch × devices.
    """
    if runs < 1 or look_every < 1 or batch_runs < 1:
        msg = "runs, look_every and batch_runs must be positive"
        raise ValueError(msg)
    for name, devices in (("fixed_devices", fixed_devices), ("stage_devices", threshold_gate.stage_devices)):
        if not 1 <= devices <= scenario.devices:
            msg = f"{name} must lie in [1, scenario.devices = {scenario.devices}], got {devices!r}"
            raise ValueError(msg)
    design = _Design(
        margin=margin,
        direction=direction,
        planned_devices=planned_devices,
        fixed_devices=fixed_devices,
        threshold_gate=threshold_gate,
        alpha=check_alpha(alpha),
        look_every=look_every,
        min_devices_per_arm=min_devices_per_arm,
    )
    parts = [
        _compare_batch(rng, scenario, min(batch_runs, runs - start), design) for start in range(0, runs, batch_runs)
    ]
    horizons = (scenario.devices, fixed_devices, scenario.devices, threshold_gate.stage_devices)
    outcomes = [
        GateOutcome(
            decision=np.concatenate([part[i][0] for part in parts]),
            decision_devices=np.concatenate([part[i][1] for part in parts]),
            horizon_devices=horizon,
        )
        for i, horizon in enumerate(horizons)
    ]
    return GateComparison(*outcomes)
