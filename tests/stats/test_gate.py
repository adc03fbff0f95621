"""Gate decisions: the rule table in both metric directions, and whole gates on clear-cut streams."""

import numpy as np
import pytest

from modelfleet.stats import (
    ConfidenceSequence,
    evaluate_gate,
    gate_decision,
    oriented_bounds,
)

MARGIN = 1.0


def cs(lower, upper):
    return ConfidenceSequence(
        estimate=(lower + upper) / 2 if np.isfinite(lower + upper) else 0.0,
        lower=lower,
        upper=upper,
        alpha_lower=0.01,
        alpha_upper=0.01,
        standard_deviation=1.0,
        n_treatment=100,
        n_control=100,
        planned_devices=200,
    )


# (lower, upper) of treatment - control on the raw scale -> decision when higher is better.
HIGHER_IS_BETTER = [
    ((-3.0, -2.0), "rollback"),  # clearly worse
    ((-0.8, -0.1), "rollback"),  # worse but within the margin: still measurably worse, so roll back
    ((-0.5, 0.5), "promote"),  # non-inferior within the margin
    ((0.2, 0.9), "promote"),  # better
    ((-1.5, 0.5), "continue"),  # could be worse than the margin
    ((-1.0, 0.5), "continue"),  # the margin itself is not excluded
    ((-np.inf, np.inf), "continue"),  # burn-in not reached
]


@pytest.mark.parametrize(("bounds", "decision"), HIGHER_IS_BETTER)
def test_the_rule_when_higher_is_better(bounds, decision):
    assert gate_decision(cs(*bounds), MARGIN, "higher_is_better") == decision


@pytest.mark.parametrize(("bounds", "decision"), HIGHER_IS_BETTER)
def test_a_lower_is_better_metric_is_the_mirror_image(bounds, decision):
    lower, upper = bounds
    assert gate_decision(cs(-upper, -lower), MARGIN, "lower_is_better") == decision


def test_oriented_bounds_make_negative_worse():
    assert oriented_bounds(cs(1.0, 3.0), "higher_is_better") == (1.0, 3.0)
    assert oriented_bounds(cs(1.0, 3.0), "lower_is_better") == (-3.0, -1.0)


def test_an_unknown_direction_or_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="direction"):
        gate_decision(cs(0.0, 1.0), MARGIN, "sideways")
    with pytest.raises(ValueError, match="margin"):
        gate_decision(cs(0.0, 1.0), -1.0, "higher_is_better")


def latency_stream(rng, devices, slowdown_ms):
    treated = rng.random(devices) < 0.8
    values = 40.0 + slowdown_ms * treated + 4.0 * rng.standard_normal(devices)
    return values, treated


def test_a_clearly_slower_canary_is_rolled_back_with_the_numbers(rng):
    values, treated = latency_stream(rng, 600, slowdown_ms=3.0)
    gate = evaluate_gate(
        values,
        treated,
        treatment_probability=0.8,
        planned_devices=600,
        margin=1.0,
        direction="lower_is_better",
        alpha_rollback=0.01,
    )
    assert gate.decision == "rollback"
    assert gate.confidence_sequence.lower > 0
    assert gate.degradation_p_value <= 0.01
    assert gate.inferiority_p_value > 0.01


def test_an_equally_fast_canary_is_promoted_and_not_rolled_back(rng):
    values, treated = latency_stream(rng, 3000, slowdown_ms=0.0)
    gate = evaluate_gate(
        values,
        treated,
        treatment_probability=0.8,
        planned_devices=3000,
        margin=1.0,
        direction="lower_is_better",
        alpha_rollback=0.01,
    )
    assert gate.decision == "promote"
    assert gate.confidence_sequence.upper < 1.0
    assert gate.inferiority_p_value <= 0.01
    assert gate.degradation_p_value > 0.01


def test_the_rollback_and_promote_sides_take_their_own_alpha(rng):
    values, treated = latency_stream(rng, 400, slowdown_ms=0.0)
    gate = evaluate_gate(
        values,
        treated,
        treatment_probability=0.8,
        planned_devices=400,
        margin=1.0,
        direction="lower_is_better",
        alpha_rollback=0.005,
        alpha_promote=0.05,
    )
    # lower is better: the rollback bound is the lower one.
    assert gate.confidence_sequence.alpha_lower == 0.005
    assert gate.confidence_sequence.alpha_upper == 0.05
