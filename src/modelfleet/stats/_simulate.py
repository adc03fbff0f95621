"""Vectorized rollout simulation: many canary-vs-holdout device streams at once, gated at every look.

Used by the tests (error rates, power) and by ``bench/gates.py``. Each run is a
stream of compared devices arriving in random order; each device has a
device-level random effect, a random number of inferences, and a value that is
the mean of its inferences (``"normal"``) or its error rate (``"binomial"``).
The sequential gate (the production :func:`confidence_sequence_path` and
:func:`decision_codes`) is applied after every ``look_every`` devices, next to
the naive fixed-horizon one-sided z-test applied at the same looks, so that the
cost of peeking can be shown side by side. Randomness only from the injected
``numpy.random.Generator``.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from modelfleet.stats._arrays import BoolArray, FloatArray, IntArray, check_alpha, check_probability
from modelfleet.stats._gate import CONTINUE, PROMOTE, ROLLBACK, Decision, Direction, decision_codes
from modelfleet.stats._scipy import ndtri
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM, confidence_sequence_path

__all__ = [
    "RolloutScenario",
    "RolloutSimulation",
    "simulate_device_values",
    "simulate_rollouts",
]

_CODES: dict[Decision, int] = {"continue": CONTINUE, "rollback": ROLLBACK, "promote": PROMOTE}


@dataclass(frozen=True, slots=True)
class RolloutScenario:
    """One simulated stage: who arrives, how devices differ, and the true effect.

    Attributes:
        devices: compared devices (canary + holdout) that arrive during the run.
        treatment_probability: chance that an arriving device is a canary.
        delta: true mean(treatment) − mean(control) of the device value.
        baseline: control mean (``"normal"``) or control error rate (``"binomial"``).
        device_sd: sd of the device random effect (additive; on the logit scale for ``"binomial"``).
        inference_sd: sd of one inference around its device's mean (``"normal"`` only).
        mean_inferences: mean inferences per device (1 + Poisson).
        metric: ``"normal"`` (e.g. confidence, latency) or ``"binomial"`` (per-device error rate).
    """

    devices: int
    treatment_probability: float
    delta: float
    baseline: float = 0.0
    device_sd: float = 1.0
    inference_sd: float = 1.0
    mean_inferences: float = 20.0
    metric: Literal["normal", "binomial"] = "normal"

    def device_value_sd(self) -> float:
        """Return the sd of one device's value for the ``"normal"`` metric.

        Var = device_sd² + inference_sd² · E[1/nᵢ] with nᵢ = 1 + Poisson(λ), λ = mean_inferences − 1,
        and E[1/(1 + X)] = (1 − e^{−λ})/λ for X ~ Poisson(λ).
        """
        lam = self.mean_inferences - 1.0
        inverse_count = 1.0 if lam <= 0 else -math.expm1(-lam) / lam
        return math.sqrt(self.device_sd**2 + self.inference_sd**2 * inverse_count)

    def control_mean(self) -> float:
        """Return the fleet mean of a control device's value: the level a fixed threshold is set against.

        For ``"binomial"`` that is E[expit(logit(baseline) + device_sd·Z)], above
        ``baseline`` when devices differ, by 40-point Gauss–Hermite quadrature.
        """
        if self.metric == "normal":
            return self.baseline
        nodes, weights = np.polynomial.hermite_e.hermegauss(40)
        logit = math.log(self.baseline / (1.0 - self.baseline))
        rates = 1.0 / (1.0 + np.exp(-(logit + self.device_sd * nodes)))
        return float(np.dot(weights, rates) / math.sqrt(2.0 * math.pi))


def simulate_device_values(
    rng: np.random.Generator, scenario: RolloutScenario, runs: int, *, treated: BoolArray | None = None
) -> tuple[FloatArray, BoolArray]:
    """Draw device values and assignments, shape ``[runs, devices]``, in arrival order.

    Given ``treated``, the values are drawn for that assignment instead (a second
    metric of the same devices), and ``scenario.treatment_probability`` is unused.
    """
    shape = (runs, scenario.devices)
    if treated is None:
        treated = rng.random(shape) < check_probability(scenario.treatment_probability, "treatment_probability")
    elif treated.shape != shape:
        msg = f"treated has shape {treated.shape}, the scenario needs {shape}"
        raise ValueError(msg)
    counts = 1.0 + rng.poisson(max(scenario.mean_inferences - 1.0, 0.0), shape)
    effect = rng.standard_normal(shape) * scenario.device_sd
    if scenario.metric == "normal":
        noise = rng.standard_normal(shape) * scenario.inference_sd / np.sqrt(counts)
        return scenario.baseline + scenario.delta * treated + effect + noise, treated
    logit = math.log(scenario.baseline / (1.0 - scenario.baseline))
    rate = np.clip(1.0 / (1.0 + np.exp(-(logit + effect))) + scenario.delta * treated, 0.0, 1.0)
    return rng.binomial(counts.astype(np.int64), rate) / counts, treated


@dataclass(frozen=True, slots=True)
class RolloutSimulation:
    """Per-run outcomes of :func:`simulate_rollouts`; device counts are −1 where nothing happened.

    Attributes:
        decision: first non-continue decision code per run (CONTINUE if none by the end).
        decision_devices: devices seen when that decision was taken.
        first_rollback: devices seen when the rollback rule first held (ignoring promotion).
        first_promote: devices seen when the promote rule first held (ignoring rollback).
        naive_first_rollback: devices seen when a fixed-horizon one-sided z-test, repeated at
            every look, first rejected "not worse".
    """

    decision: IntArray
    decision_devices: IntArray
    first_rollback: IntArray
    first_promote: IntArray
    naive_first_rollback: IntArray

    def rate(self, decision: Decision, *, by_devices: int | None = None) -> float:
        """Return the share of runs whose first decision was ``decision`` (within ``by_devices``)."""
        hit = self.decision == _CODES[decision]
        if by_devices is not None:
            hit &= (self.decision_devices >= 0) & (self.decision_devices <= by_devices)
        return float(np.mean(hit))

    @staticmethod
    def ever(first: IntArray, by_devices: int | None = None) -> float:
        """Return the share of runs where a rule held at some look (within ``by_devices``)."""
        hit = first >= 0
        if by_devices is not None:
            hit &= first <= by_devices
        return float(np.mean(hit))


def _first_true(hits: BoolArray) -> IntArray:
    """Return, per row, the devices seen (look index + 1) at the first True, or −1."""
    first = np.argmax(hits, axis=-1)
    return np.where(hits.any(axis=-1), first + 1, -1).astype(np.int64)


def _naive_rejections(
    values: FloatArray, treated: BoolArray, alpha: float, direction: Direction, min_per_arm: int
) -> BoolArray:
    """Return where a one-sided Welch z-test of "treatment not worse" rejects at level α, look by look."""
    z_t = treated.astype(np.float64)
    stats = []
    for weight in (z_t, 1.0 - z_t):
        n = np.cumsum(weight, axis=-1)
        total = np.cumsum(weight * values, axis=-1)
        squares = np.cumsum(weight * values * values, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / n
            var = (squares - n * mean * mean) / (n - 1.0)
        stats.append((n, mean, var))
    (n1, m1, v1), (n0, m0, v0) = stats
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (m1 - m0) / np.sqrt(v1 / n1 + v0 / n0)
    oriented = z if direction == "higher_is_better" else -z
    ready = (n1 >= min_per_arm) & (n0 >= min_per_arm)
    return ready & (oriented < ndtri(alpha))


@dataclass(frozen=True, slots=True)
class _GateSpec:
    """The gate under simulation."""

    margin: float
    direction: Direction
    planned_devices: int
    alpha: float
    look_every: int
    min_devices_per_arm: int


def _simulate_batch(
    rng: np.random.Generator,
    scenario: RolloutScenario,
    runs: int,
    gate: _GateSpec,
) -> tuple[IntArray, ...]:
    """Simulate ``runs`` streams and return the per-run first-look arrays."""
    values, treated = simulate_device_values(rng, scenario, runs)
    path = confidence_sequence_path(
        values,
        treated,
        treatment_probability=scenario.treatment_probability,
        planned_devices=gate.planned_devices,
        alpha=gate.alpha,
        min_devices_per_arm=gate.min_devices_per_arm,
    )
    looks = np.zeros(scenario.devices, dtype=np.bool_)
    looks[gate.look_every - 1 :: gate.look_every] = True
    looks[-1] = True
    codes = np.where(looks, decision_codes(path.lower, path.upper, gate.margin, gate.direction), CONTINUE)
    decided = codes != CONTINUE
    first = np.argmax(decided, axis=-1)
    decision = np.where(decided.any(axis=-1), codes[np.arange(runs), first], CONTINUE)
    naive = looks & _naive_rejections(values, treated, gate.alpha, gate.direction, gate.min_devices_per_arm)
    return (
        decision.astype(np.int64),
        _first_true(decided),
        _first_true(codes == ROLLBACK),
        _first_true(codes == PROMOTE),
        _first_true(naive),
    )


def simulate_rollouts(
    rng: np.random.Generator,
    scenario: RolloutScenario,
    *,
    runs: int,
    margin: float,
    direction: Direction,
    planned_devices: int,
    alpha: float = 0.01,
    look_every: int = 1,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
    batch_runs: int = 256,
) -> RolloutSimulation:
    """Simulate ``runs`` rollouts of one stage and gate each at every look.

    Note that ``rollback`` in the ``rate`` sense stops a run; ``first_rollback`` and
    ``first_promote`` report each rule on its own, which is what error-rate
    statements such as P(promote ever | Δ = −margin) ≤ α need.

    Args:
        rng: the only source of randomness.
        scenario: the stage to simulate.
        runs: number of independent rollouts.
        margin: non-inferiority margin of the gate.
        direction: which way the metric improves.
        planned_devices: the sample size the boundary is tuned for.
        alpha: the gate's α on each side (also the naive test's level).
        look_every: devices between looks (1 = after every device).
        min_devices_per_arm: burn-in of the confidence sequence (and of the naive test).
        batch_runs: runs simulated together; memory grows as a few hundred bytes × batch × devices.
    """
    if runs < 1 or look_every < 1 or batch_runs < 1:
        msg = "runs, look_every and batch_runs must be positive"
        raise ValueError(msg)
    gate = _GateSpec(margin, direction, planned_devices, check_alpha(alpha), look_every, min_devices_per_arm)
    parts = [
        _simulate_batch(rng, scenario, min(batch_runs, runs - start), gate) for start in range(0, runs, batch_runs)
    ]
    decision, decided, rollback, promote, naive = (np.concatenate(column) for column in zip(*parts, strict=True))
    return RolloutSimulation(
        decision=decision,
        decision_devices=decided,
        first_rollback=rollback,
        first_promote=promote,
        naive_first_rollback=naive,
    )
