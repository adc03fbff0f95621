"""Vectorized experiment simulation: many A/B, shadow or time-slice runs on one simulated fleet, read at every look.

One metric (higher is better). Device i has a level bᵢ ~ N(baseline, device_sd²)
— the device-to-device spread — and its value over one full exposure is
measured with noise of sd ``within_sd``; the candidate adds ``effect`` (+ a
per-device N(0, effect_sd²) spread):

- ``ab``: each device runs one arm for the whole exposure (arms drawn with the
  planned shares; only arm 1 has the effect); a device of arm j reports with
  probability ``report_probability[j]`` (non-reporting devices never arrive);
- ``shadow``: each device runs both models on the same inputs for the whole
  exposure; the two measurement errors have correlation ``pair_correlation``;
- ``time_slice``: each device's exposure is cut into ``windows`` windows (noise
  sd within_sd·√windows per window), run in ABBA/BAAB blocks (orientation
  drawn per device), with a common linear ``trend`` per window.

The production analyses' own paths (:mod:`modelfleet.stats._streams`, the
family correction and verdict rule of :mod:`modelfleet.stats._experiments`, the
sequential SRM stop) are read after every device; a run ends at its first
verdict other than inconclusive. Randomness only from the injected
``numpy.random.Generator``.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modelfleet.stats._ab import sequential_srm_path
from modelfleet.stats._arrays import BoolArray, FloatArray, IntArray, check_probability
from modelfleet.stats._experiments import (
    INCONCLUSIVE,
    STOPPED,
    VERDICTS,
    WINNER,
    Correction,
    ExperimentKind,
    Verdict,
    adjust_p_values,
    experiment_codes,
    side_alpha,
    verdict_codes,
)
from modelfleet.stats._sequential import DEFAULT_MIN_DEVICES_PER_ARM
from modelfleet.stats._srm import SRM_THRESHOLD
from modelfleet.stats._streams import StreamPath, paired_path, two_arm_path
from modelfleet.stats._time_slice import within_device_effects

__all__ = ["ExperimentScenario", "ExperimentSimulation", "simulate_experiments"]


@dataclass(frozen=True, slots=True)
class ExperimentScenario:
    """A simulated fleet and the candidate's true effect (see the module docstring).

    Attributes:
        devices: devices that report (all arms for A/B).
        effect: true candidate − control on the metric (A/B: arm 1 only).
        baseline: the fleet's mean level.
        device_sd: device-to-device sd of the level.
        within_sd: sd of one device's value over one full exposure around its level.
        effect_sd: device-to-device sd of the effect.
        pair_correlation: correlation of the two models' errors on the same inputs (shadow).
        shares: planned arm shares, control first (A/B).
        windows: windows per device (time-slice), a multiple of 4.
        trend: common drift per window (time-slice), in metric units.
        report_probability: probability that a device of each arm reports (A/B); ``None``: all report.
    """

    devices: int
    effect: float = 0.0
    baseline: float = 0.0
    device_sd: float = 1.0
    within_sd: float = 0.2
    effect_sd: float = 0.0
    pair_correlation: float = 0.0
    shares: tuple[float, ...] = (0.5, 0.5)
    windows: int = 4
    trend: float = 0.0
    report_probability: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class ExperimentSimulation:
    """Per-run outcomes of :func:`simulate_experiments`.

    Attributes:
        verdict: first verdict code other than INCONCLUSIVE per run (INCONCLUSIVE if none).
        decision_devices: devices seen at that verdict, −1 where there was none.
        winner: the winning arm (1-based variant; the smallest adjusted p among several winners) of runs
            that ended in WINNER, else −1.
    """

    verdict: IntArray
    decision_devices: IntArray
    winner: IntArray

    def rate(self, verdict: Verdict, *, by_devices: int | None = None) -> float:
        """Return the share of runs whose first verdict was ``verdict`` (within ``by_devices``)."""
        code = next(c for c, v in VERDICTS.items() if v == verdict)
        hit = self.verdict == code
        if by_devices is not None:
            hit &= (self.decision_devices >= 0) & (self.decision_devices <= by_devices)
        return float(np.mean(hit))

    def count(self, verdict: Verdict) -> int:
        """Return the number of runs whose first verdict was ``verdict``."""
        code = next(c for c, v in VERDICTS.items() if v == verdict)
        return int(np.sum(self.verdict == code))

    def devices_for(self, share: float) -> int:
        """Return the devices by which ``share`` of the runs had found a winner (−1 if they never did)."""
        found = np.sort(np.where(self.verdict == WINNER, self.decision_devices, np.iinfo(np.int64).max))
        index = math.ceil(check_probability(share, "share") * found.size) - 1
        value = int(found[index])
        return -1 if value == np.iinfo(np.int64).max else value


def _first(codes: IntArray, winners: IntArray) -> ExperimentSimulation:
    """Return each run's first non-inconclusive verdict, its look, and the winning arm then."""
    decided = codes != INCONCLUSIVE
    first = np.argmax(decided, axis=-1)
    any_decided = decided.any(axis=-1)
    rows = np.arange(codes.shape[0])
    verdict = np.where(any_decided, codes[rows, first], INCONCLUSIVE).astype(np.int64)
    winner = np.where(verdict == WINNER, winners[rows, first], -1).astype(np.int64)
    return ExperimentSimulation(verdict, np.where(any_decided, first + 1, -1).astype(np.int64), winner)


def _single(path: StreamPath, alpha: float) -> tuple[IntArray, IntArray]:
    """Return verdict codes and winners of a one-comparison family along the looks."""
    codes = verdict_codes(
        path.p_value()[..., None],
        path.sign()[..., None],
        variant_of=np.zeros(1, dtype=np.int64),
        primary=np.ones(1, dtype=np.bool_),
        variants=1,
        alpha=alpha,
    )[..., 0]
    return codes, np.where(codes == WINNER, 1, -1).astype(np.int64)


def _levels(rng: np.random.Generator, s: ExperimentScenario, shape: tuple[int, ...]) -> FloatArray:
    """Return device levels: the fleet's baseline plus each device's own offset."""
    return s.baseline + s.device_sd * rng.standard_normal(shape)


def _ab(
    rng: np.random.Generator, s: ExperimentScenario, runs: int, planned: int, *, alpha: float, correction: Correction
) -> ExperimentSimulation:
    """Simulate A/B(/n) runs with the SRM stop."""
    shares = np.asarray(s.shares, dtype=np.float64) / sum(s.shares)
    arriving = shares * (np.ones_like(shares) if s.report_probability is None else np.asarray(s.report_probability))
    arms = rng.choice(shares.size, size=(runs, s.devices), p=arriving / arriving.sum())
    values = _levels(rng, s, arms.shape) + s.within_sd * rng.standard_normal(arms.shape)
    values += (arms == 1) * (s.effect + s.effect_sd * rng.standard_normal(arms.shape))
    variants = shares.size - 1
    a_side = side_alpha(alpha, variants)
    p_values = np.empty((runs, s.devices, variants))
    signs = np.empty_like(p_values)
    for v in range(1, shares.size):
        member = (arms == 0) | (arms == v)
        order = np.argsort(~member, axis=-1, kind="stable")  # members first, in arrival order
        path = two_arm_path(
            np.take_along_axis(values, order, axis=-1),
            np.take_along_axis(arms == v, order, axis=-1),
            treatment_probability=float(shares[v] / (shares[v] + shares[0])),
            planned_devices=max(2, round(planned * (shares[v] + shares[0]))),
            alpha_side=a_side,
            min_devices_per_arm=DEFAULT_MIN_DEVICES_PER_ARM,
        )
        seen = np.maximum(np.cumsum(member, axis=-1) - 1, 0)
        p_values[..., v - 1] = np.where(seen > 0, np.take_along_axis(path.p_value(), seen, axis=-1), 1.0)
        signs[..., v - 1] = np.take_along_axis(path.sign(), seen, axis=-1)
    adjusted = adjust_p_values(p_values, correction)
    per_variant = verdict_codes(
        adjusted,
        signs,
        variant_of=np.arange(variants),
        primary=np.ones(variants, dtype=np.bool_),
        variants=variants,
        alpha=alpha,
    )
    codes = experiment_codes(per_variant)
    oriented = np.where(per_variant == WINNER, -adjusted, -np.inf)
    winners = np.argmax(oriented, axis=-1) + 1
    stopped: BoolArray = sequential_srm_path(arms, shares) < SRM_THRESHOLD
    return _first(np.where(stopped, STOPPED, codes).astype(np.int64), winners.astype(np.int64))


def _shadow(rng: np.random.Generator, s: ExperimentScenario, runs: int, planned: int, alpha: float) -> StreamPath:
    """Return the paired path of shadow runs: both models on the same inputs of each device."""
    shape = (runs, s.devices)
    level = _levels(rng, s, shape)
    common = rng.standard_normal(shape)
    r = s.pair_correlation
    active = level + s.within_sd * common
    other = r * common + math.sqrt(1.0 - r * r) * rng.standard_normal(shape)
    candidate = level + s.effect + s.effect_sd * rng.standard_normal(shape) + s.within_sd * other
    return paired_path(
        candidate - active,
        active,
        planned_devices=planned,
        alpha_side=side_alpha(alpha, 1),
        min_devices=DEFAULT_MIN_DEVICES_PER_ARM,
    )


def _time_slice(rng: np.random.Generator, s: ExperimentScenario, runs: int, planned: int, alpha: float) -> StreamPath:
    """Return the paired path of time-slice runs: ABBA/BAAB windows, a linear trend, per-device fits."""
    if s.windows < 4 or s.windows % 4:  # noqa: PLR2004 - ABBA blocks of two versions
        msg = f"windows must be a positive multiple of 4, got {s.windows}"
        raise ValueError(msg)
    block = np.array([[0, 1, 1, 0], [1, 0, 0, 1]])
    orientation = rng.integers(0, 2, size=(runs, s.devices))
    schedule = np.tile(block[orientation], s.windows // 4)
    level = _levels(rng, s, (runs, s.devices))[..., None]
    effect = (s.effect + s.effect_sd * rng.standard_normal((runs, s.devices)))[..., None]
    noise = s.within_sd * math.sqrt(s.windows) * rng.standard_normal(schedule.shape)
    values = level + s.trend * np.arange(s.windows) + effect * schedule + noise
    effects, control = within_device_effects(values, schedule, versions=2, trend="linear")
    return paired_path(
        effects[..., 0],
        control,
        planned_devices=planned,
        alpha_side=side_alpha(alpha, 1),
        min_devices=DEFAULT_MIN_DEVICES_PER_ARM,
    )


def simulate_experiments(
    rng: np.random.Generator,
    scenario: ExperimentScenario,
    kind: ExperimentKind,
    *,
    runs: int,
    planned_devices: int,
    alpha: float = 0.05,
    correction: Correction = "holm",
) -> ExperimentSimulation:
    """Simulate ``runs`` experiments of ``kind`` and return each run's first verdict.

    Args:
        rng: the only source of randomness.
        scenario: the fleet and the true effect.
        kind: ``"ab"``, ``"shadow"`` or ``"time_slice"``.
        runs: independent experiments.
        planned_devices: devices the analysis is tuned for (from :func:`plan_experiment`).
        alpha: the family's level.
        correction: ``"holm"`` or ``"bh"`` (A/B with several variants).
    """
    if runs < 1 or scenario.devices < 2:  # noqa: PLR2004 - a stream needs two devices
        msg = "need at least one run and two devices"
        raise ValueError(msg)
    check_probability(alpha, "alpha")
    if kind == "ab":
        return _ab(rng, scenario, runs, planned_devices, alpha=alpha, correction=correction)
    if kind == "shadow":
        return _first(*_single(_shadow(rng, scenario, runs, planned_devices, alpha), alpha))
    if kind == "time_slice":
        return _first(*_single(_time_slice(rng, scenario, runs, planned_devices, alpha), alpha))
    msg = f"kind must be 'ab', 'shadow' or 'time_slice', got {kind!r}"
    raise ValueError(msg)
