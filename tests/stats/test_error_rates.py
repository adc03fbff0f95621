"""The sequential gate under continuous monitoring: false rollbacks, false promotions and power, simulated.

Every test looks after every device, so each run is checked at hundreds to
thousands of looks. A correct gate keeps its error shares under alpha (checked
against the 99.9% binomial upper bound at alpha = 0.05, where a broken gate has
no room to hide); the naive fixed-horizon z-test on the same looks does not.
"""

import pytest

from modelfleet.stats import RolloutScenario, plan_stage, simulate_rollouts

pytestmark = pytest.mark.slow

RUNS = 2000
MARGIN = 0.3
# A confidence-like metric: device effects (sd 1) plus per-inference noise (sd 2) over ~20 inferences.
DEVICE_EFFECT_SD, INFERENCE_SD, INFERENCES = 1.0, 2.0, 20.0


def scenario(devices, holdout, delta, **changes):
    return RolloutScenario(
        devices=devices,
        treatment_probability=1.0 - holdout,
        delta=delta,
        device_sd=DEVICE_EFFECT_SD,
        inference_sd=INFERENCE_SD,
        mean_inferences=INFERENCES,
        **changes,
    )


def planned_devices(holdout, alpha):
    sd = scenario(1, holdout, 0.0).device_value_sd()
    plan = plan_stage(
        margin=MARGIN, device_sd=sd, holdout_fraction=holdout, arrival_rate_per_hour=100, alpha=alpha, power=0.9
    )
    return plan.devices_needed


@pytest.mark.parametrize(("alpha", "holdout"), [(0.05, 0.5), (0.05, 0.1), (0.01, 0.5), (0.01, 0.1)])
def test_no_difference_rolls_back_at_most_alpha_while_naive_peeking_does_not(rng, upper_bound, alpha, holdout):
    n = planned_devices(holdout, alpha)
    result = simulate_rollouts(
        rng,
        scenario(2 * n, holdout, delta=0.0),  # keep looking until twice the planned size
        runs=RUNS,
        margin=MARGIN,
        direction="higher_is_better",
        planned_devices=n,
        alpha=alpha,
    )
    sequential = result.ever(result.first_rollback)
    naive = result.ever(result.naive_first_rollback)
    report = f"alpha={alpha} holdout={holdout} looks={2 * n}: sequential {sequential:.4f}, naive peeking {naive:.4f}"
    assert sequential <= upper_bound(RUNS, alpha), report
    assert naive > 2 * alpha, report


def test_skewed_per_device_error_rates_with_a_small_holdout_keep_validity(rng, upper_bound):
    # 5% base error rate, device effects of sd 1 on the logit scale: many devices at 0, a long right tail.
    result = simulate_rollouts(
        rng,
        scenario(2000, 0.1, delta=0.0, metric="binomial", baseline=0.05),
        runs=RUNS,
        margin=0.02,
        direction="lower_is_better",
        planned_devices=1000,
        alpha=0.05,
    )
    sequential = result.ever(result.first_rollback)
    assert sequential <= upper_bound(RUNS, 0.05), f"false rollback share {sequential:.4f}"


@pytest.mark.parametrize(("alpha", "holdout"), [(0.05, 0.5), (0.01, 0.1)])
def test_a_degradation_of_the_margin_rolls_back_by_the_planned_size_with_the_planned_power(rng, alpha, holdout):
    n = planned_devices(holdout, alpha)
    result = simulate_rollouts(
        rng,
        scenario(n, holdout, delta=-MARGIN),
        runs=RUNS,
        margin=MARGIN,
        direction="higher_is_better",
        planned_devices=n,
        alpha=alpha,
    )
    power = result.rate("rollback", by_devices=n)
    assert power >= 0.9, f"alpha={alpha} holdout={holdout} n={n}: rollback share {power:.4f}"


@pytest.mark.parametrize("holdout", [0.5, 0.1])
def test_a_canary_worse_by_the_margin_is_promoted_at_most_alpha(rng, upper_bound, holdout):
    alpha = 0.05
    n = planned_devices(holdout, alpha)
    result = simulate_rollouts(
        rng,
        scenario(2 * n, holdout, delta=-MARGIN),
        runs=RUNS // 2,
        margin=MARGIN,
        direction="higher_is_better",
        planned_devices=n,
        alpha=alpha,
    )
    promoted = result.ever(result.first_promote)  # the promote rule on its own, even after a rollback would stop
    assert promoted <= upper_bound(RUNS // 2, alpha), f"holdout={holdout}: promotion share {promoted:.4f}"


def test_a_lower_is_better_metric_is_gated_the_same_way_mirrored(rng, upper_bound):
    n = planned_devices(0.5, 0.05)
    worse = simulate_rollouts(
        rng,
        scenario(n, 0.5, delta=+MARGIN),  # latency-like: a higher value is worse
        runs=RUNS // 2,
        margin=MARGIN,
        direction="lower_is_better",
        planned_devices=n,
        alpha=0.05,
    )
    same = simulate_rollouts(
        rng,
        scenario(2 * n, 0.5, delta=0.0),
        runs=RUNS // 2,
        margin=MARGIN,
        direction="lower_is_better",
        planned_devices=n,
        alpha=0.05,
    )
    assert worse.rate("rollback", by_devices=n) >= 0.9
    assert same.ever(same.first_rollback) <= upper_bound(RUNS // 2, 0.05)
