"""Gate decisions from a confidence sequence: roll back, promote, or keep watching.

Δ is treatment − control, oriented so that negative is worse: for a
``lower_is_better`` metric (error rate, latency) the interval is negated first.
With the oriented bounds [L, U]:

- **rollback** when U < 0: the canary is significantly worse than the holdout
  (a one-sided test of H0: Δ ≥ 0 at the upper bound's α);
- **promote** when L > −margin: non-inferiority within the margin is shown
  (a one-sided test of H0: Δ ≤ −margin at the lower bound's α);
- otherwise **continue**.

Because the bounds are time-uniform, P(rollback | Δ = 0) ≤ α_rollback and
P(promote | Δ = −margin) ≤ α_promote however often the reconciler looks. When
both hold (the interval sits inside (−margin, 0)), rollback wins: the canary is
measurably worse, if only slightly, and shipping a worse model costs more than
waiting (shared/DESIGN.md §7). Across several gates, promotion needs every
gate to promote — an intersection–union test, valid at each gate's α without
adjustment — while any one gate can roll back, so the rollback side's α is
split across gates (:func:`modelfleet.stats.split_alpha`) or the degradation
p-values go through Holm.
"""

# ruff: noqa: RUF002, RUF003 - formulas are written in mathematical notation (α, σ, ρ, −)

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from modelfleet.stats._arrays import FloatArray, IntArray, check_alpha
from modelfleet.stats._sequential import (
    DEFAULT_MIN_DEVICES_PER_ARM,
    ConfidenceSequence,
    always_valid_p_value,
    confidence_sequence,
)

__all__ = [
    "CONTINUE",
    "PROMOTE",
    "ROLLBACK",
    "Decision",
    "Direction",
    "GateEvaluation",
    "decision_codes",
    "evaluate_gate",
    "gate_decision",
    "oriented_bounds",
]

Direction = Literal["higher_is_better", "lower_is_better"]
Decision = Literal["rollback", "promote", "continue"]

CONTINUE, ROLLBACK, PROMOTE = 0, 1, 2
"""Integer codes of the decisions in vectorized form (:func:`decision_codes`)."""

_DECISIONS: dict[int, Decision] = {CONTINUE: "continue", ROLLBACK: "rollback", PROMOTE: "promote"}


def _sign(direction: Direction) -> float:
    """Return +1 when higher is better, −1 when lower is better."""
    if direction == "higher_is_better":
        return 1.0
    if direction == "lower_is_better":
        return -1.0
    msg = f"direction must be 'higher_is_better' or 'lower_is_better', got {direction!r}"
    raise ValueError(msg)


def _check_margin(margin: float) -> float:
    """Return a non-negative, finite margin."""
    if not 0.0 <= margin < float("inf"):
        msg = f"margin must be finite and non-negative, got {margin!r}"
        raise ValueError(msg)
    return float(margin)


def decision_codes(lower: ArrayLike, upper: ArrayLike, margin: float, direction: Direction) -> IntArray:
    """Apply the gate rule elementwise to raw-scale bounds; return CONTINUE/ROLLBACK/PROMOTE codes."""
    sign, m = _sign(direction), _check_margin(margin)
    lo, up = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    worse_bound: FloatArray = up if sign > 0 else -lo
    better_bound: FloatArray = lo if sign > 0 else -up
    codes = np.where(better_bound > -m, PROMOTE, CONTINUE)
    return np.where(worse_bound < 0.0, ROLLBACK, codes).astype(np.int64)


def oriented_bounds(cs: ConfidenceSequence, direction: Direction) -> tuple[float, float]:
    """Return (L, U) of Δ oriented so that negative is worse."""
    if _sign(direction) > 0:
        return cs.lower, cs.upper
    return -cs.upper, -cs.lower


def gate_decision(cs: ConfidenceSequence, margin: float, direction: Direction) -> Decision:
    """Decide a gate from its confidence sequence: ``"rollback"``, ``"promote"`` or ``"continue"``."""
    code = int(decision_codes(np.array(cs.lower), np.array(cs.upper), margin, direction))
    return _DECISIONS[code]


@dataclass(frozen=True, slots=True)
class GateEvaluation:
    """A gate's decision with the numbers that justify it (for the audit log).

    Attributes:
        decision: ``"rollback"``, ``"promote"`` or ``"continue"``.
        confidence_sequence: the raw-scale (treatment − control) confidence sequence.
        margin: the non-inferiority margin, in the metric's units.
        direction: which way the metric improves.
        degradation_p_value: always-valid p for H0 "not worse" (oriented Δ ≥ 0); ≤ α_rollback iff
            the rollback bound has crossed 0 at some look.
        inferiority_p_value: always-valid p for H0 "worse by the margin or more" (oriented Δ ≤ −margin).
    """

    decision: Decision
    confidence_sequence: ConfidenceSequence
    margin: float
    direction: Direction
    degradation_p_value: float
    inferiority_p_value: float


def evaluate_gate(
    values: ArrayLike,
    treated: ArrayLike,
    *,
    treatment_probability: float,
    planned_devices: int,
    margin: float,
    direction: Direction,
    alpha_rollback: float = 0.01,
    alpha_promote: float | None = None,
    min_devices_per_arm: int = DEFAULT_MIN_DEVICES_PER_ARM,
) -> GateEvaluation:
    """Evaluate one gate on the device stream so far.

    Args:
        values: one value per compared device, in the order devices completed exposure.
        treated: canary (1) or holdout (0) per device.
        treatment_probability: design share of canaries among compared devices.
        planned_devices: compared devices the stage plans (from :func:`modelfleet.stats.plan_stage`).
        margin: non-inferiority margin, ≥ 0, in the metric's units.
        direction: ``"higher_is_better"`` or ``"lower_is_better"``.
        alpha_rollback: P(rollback | Δ = 0) bound for this gate (after any split across gates).
        alpha_promote: P(promote | Δ = −margin) bound; defaults to ``alpha_rollback``.
        min_devices_per_arm: devices each arm needs before any decision.
    """
    a_rb = check_alpha(alpha_rollback, "alpha_rollback")
    a_pr = check_alpha(a_rb if alpha_promote is None else alpha_promote, "alpha_promote")
    sign, m = _sign(direction), _check_margin(margin)
    a_lower, a_upper = (a_pr, a_rb) if sign > 0 else (a_rb, a_pr)
    cs = confidence_sequence(
        values,
        treated,
        treatment_probability=treatment_probability,
        planned_devices=planned_devices,
        alpha=a_lower,
        alpha_upper=a_upper,
        min_devices_per_arm=min_devices_per_arm,
    )

    def p_value(null: float, alternative: Literal["less", "greater"], alpha: float) -> float:
        return always_valid_p_value(
            values,
            treated,
            treatment_probability=treatment_probability,
            planned_devices=planned_devices,
            null=null,
            alternative=alternative,
            alpha=alpha,
            min_devices_per_arm=min_devices_per_arm,
        )

    return GateEvaluation(
        decision=gate_decision(cs, m, direction),
        confidence_sequence=cs,
        margin=m,
        direction=direction,
        degradation_p_value=p_value(0.0, "less" if sign > 0 else "greater", a_rb),
        inferiority_p_value=p_value(-sign * m, "greater" if sign > 0 else "less", a_pr),
    )
