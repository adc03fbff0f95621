"""The baselines our gate is measured against: a fixed-horizon plan and interval, a failure threshold, exact shares."""

import math

import numpy as np
import pytest
from scipy import stats

from modelfleet.stats import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    RolloutScenario,
    ThresholdGate,
    clopper_pearson,
    compare_gates,
    difference_in_means,
    fixed_horizon_bounds,
    fixed_horizon_devices,
    plan_stage,
    threshold_gate_aborts,
)

# (alpha, power): the z-values of the textbook single-look plan.
PLANS = [(0.05, 0.8), (0.05, 0.9), (0.01, 0.9)]


@pytest.mark.parametrize(("alpha", "power"), PLANS)
def test_the_fixed_horizon_plan_is_the_textbook_normal_power_equation(alpha, power):
    margin, canary_sd, control_sd, holdout = 0.3, 1.5, 1.0, 0.2
    sd = math.sqrt(canary_sd**2 / (1 - holdout) + control_sd**2 / holdout)  # sqrt(n) x sd(difference in means)
    z = stats.norm.ppf(power) + stats.norm.ppf(1 - alpha)
    devices = fixed_horizon_devices(
        margin=margin, device_sd=canary_sd, control_sd=control_sd, holdout_fraction=holdout, alpha=alpha, power=power
    )
    assert devices == math.ceil((z * sd / margin) ** 2)


@pytest.mark.parametrize(("alpha", "power"), PLANS)
def test_a_single_look_needs_fewer_devices_than_the_sequential_plan_by_the_boundary_ratio(alpha, power):
    plan = plan_stage(
        margin=0.3, device_sd=1.2, holdout_fraction=0.2, arrival_rate_per_hour=100, alpha=alpha, power=power
    )
    fixed = fixed_horizon_devices(margin=0.3, device_sd=1.2, holdout_fraction=0.2, alpha=alpha, power=power)
    assert 1.4 < plan.devices_needed / fixed < 2.2  # ((z_power + b_alpha) / (z_power + z_alpha))^2, ADR 0004


def test_the_fixed_horizon_bounds_at_the_last_look_are_the_welch_interval(rng):
    values = rng.normal(size=300) + 40.0  # far from 0, like latency: the running sums must not cancel
    treated = rng.random(300) < 0.3
    lower, upper = fixed_horizon_bounds(values, treated, alpha=0.025)
    welch = difference_in_means(values[treated], values[~treated])
    expected = welch.interval(0.95)
    assert lower[-1] == pytest.approx(expected[0], rel=1e-9)
    assert upper[-1] == pytest.approx(expected[1], rel=1e-9)


def test_the_fixed_horizon_bounds_are_infinite_until_both_arms_have_their_burn_in():
    treated = np.array([True] * 5 + [False] * 5 + [True, False])
    values = np.arange(12.0)
    lower, upper = fixed_horizon_bounds(values, treated, min_devices_per_arm=6)
    assert np.all(np.isinf(lower[:-1]))
    assert np.all(np.isinf(upper[:-1]))
    assert np.isfinite(lower[-1])
    assert np.isfinite(upper[-1])


# (canary failure values so far, threshold, minimum canaries, aborts after each device)
THRESHOLD_CASES = {
    "below the minimum count it never aborts": ([1, 1, 1], 0.5, 4, [False, False, False]),
    "aborts once the count is met and the share is above": ([0, 1, 1, 1], 0.5, 3, [False, False, True, True]),
    "at the threshold is not above it": ([1, 0, 1, 0], 0.5, 2, [False, False, True, False]),
}


@pytest.mark.parametrize(
    ("failures", "threshold", "minimum", "expected"), THRESHOLD_CASES.values(), ids=THRESHOLD_CASES
)
def test_the_threshold_gate_aborts_on_the_canary_failure_share_after_a_minimum_count(
    failures, threshold, minimum, expected
):
    treated = np.ones(len(failures), dtype=bool)
    aborts = threshold_gate_aborts(np.array(failures, float), treated, threshold=threshold, min_treated=minimum)
    assert aborts.tolist() == expected


def test_the_threshold_gate_ignores_holdout_devices():
    failures = np.array([0.0, 1.0, 1.0, 1.0])
    treated = np.array([True, False, False, True])
    # Pooled over all four devices the share would be 0.75; the two canaries share 0.5.
    assert threshold_gate_aborts(failures, treated, threshold=0.6, min_treated=2).tolist() == [False] * 4


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (3, 10), (10, 10), (12, 2000)])
def test_clopper_pearson_matches_its_beta_quantiles(successes, trials):
    lower, upper = clopper_pearson(successes, trials, 0.95)
    if successes == 0:
        assert lower == 0.0
        assert upper == pytest.approx(1 - 0.025 ** (1 / trials))
    if successes == trials:
        assert upper == 1.0
        assert lower == pytest.approx(0.025 ** (1 / trials))
    assert lower <= successes / trials <= upper
    assert stats.binom.sf(successes - 1, trials, lower) == pytest.approx(0.025, abs=1e-9) or lower == 0.0


def test_clopper_pearson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(5, 4)


SCENARIO = RolloutScenario(devices=400, treatment_probability=0.7, delta=-0.5, device_sd=1.0, inference_sd=2.0)
ERRORS = RolloutScenario(devices=1, treatment_probability=0.5, delta=0.0, baseline=0.05, metric="binomial")
GATE = ThresholdGate(threshold=0.1, min_treated=30, stage_devices=250, watched=ERRORS)


def compare(seed, scenario=SCENARIO, **changes):
    kwargs = {
        "runs": 300,
        "margin": 0.5,
        "direction": "higher_is_better",
        "planned_devices": 400,
        "fixed_devices": 200,
        "threshold_gate": GATE,
        "look_every": 10,
        "batch_runs": 128,
    } | changes
    return compare_gates(np.random.default_rng(seed), scenario, **kwargs)


def test_the_same_seed_gives_the_same_comparison():
    a, b = compare(11), compare(11)
    for name, outcome in a.outcomes().items():
        np.testing.assert_array_equal(outcome.decision, b.outcomes()[name].decision)
        np.testing.assert_array_equal(outcome.decision_devices, b.outcomes()[name].decision_devices)


def test_each_procedure_decides_on_its_own_schedule():
    result = compare(12)
    fixed, threshold = result.fixed_horizon, result.threshold
    assert set(np.unique(fixed.decision_devices)) <= {-1, 200}  # one look, at the planned devices
    assert np.all(threshold.decision_devices[threshold.decision == PROMOTE] == 250)  # promotes at the stage end
    assert np.all(threshold.decision_devices[threshold.decision == ROLLBACK] % 10 == 0)  # aborts at looks
    for outcome in (result.sequential, result.naive_peeking):
        decided = outcome.decision != CONTINUE
        assert np.all(outcome.decision_devices[decided] % 10 == 0)
        assert np.all(outcome.devices_spent()[~decided] == 400)


def test_the_sequential_outcome_agrees_with_simulate_rollouts_on_the_same_draws():
    from modelfleet.stats import simulate_rollouts  # noqa: PLC0415 - the cross-check only

    gate = ThresholdGate(threshold=0.5, min_treated=30, stage_devices=250)  # watches the gated values: no extra draws
    ours = compare(13, threshold_gate=gate).sequential
    reference = simulate_rollouts(
        np.random.default_rng(13),
        SCENARIO,
        runs=300,
        margin=0.5,
        direction="higher_is_better",
        planned_devices=400,
        look_every=10,
        batch_runs=128,
    )
    np.testing.assert_array_equal(ours.decision, reference.decision)
    np.testing.assert_array_equal(ours.decision_devices, reference.decision_devices)


def test_the_comparison_refuses_a_look_beyond_the_stream():
    with pytest.raises(ValueError, match="fixed_devices"):
        compare(1, fixed_devices=401)
