"""Our gate against a fixed-horizon test, naive peeking and a threshold gate, on the same simulated rollouts.

test_error_rates.py checks the sequential gate alone, looking after every
device, with "the rule ever held" as the outcome. Here the reconciler looks
every 10 minutes (33 devices at 200 devices/hour), each run ends at its first
decision as in production, and the baselines of bench/gates.py decide on the
very same devices: a label-free metric that degrades silently (errors
unchanged) and a skewed per-device error rate, holdout 20 %.
"""

import functools
from dataclasses import replace

import numpy as np
import pytest

from modelfleet.stats import (
    RolloutScenario,
    ThresholdGate,
    clopper_pearson,
    compare_gates,
    fixed_horizon_devices,
    plan_stage,
    simulate_device_values,
)

pytestmark = pytest.mark.slow

RUNS = 1000
HOLDOUT = 0.2
LOOK_EVERY = 33  # 10 minutes at 200 compared devices per hour
# Per-device error rate: 2 % at the median device, logit spread 1, ~50 inferences per exposure window.
ERRORS = RolloutScenario(1, 1 - HOLDOUT, 0.0, baseline=0.02, device_sd=1.0, mean_inferences=50, metric="binomial")
# Mean top-1 confidence per device: device spread 0.03, per-inference sd 0.15 over ~100 inferences.
CONFIDENCE = RolloutScenario(1, 1 - HOLDOUT, 0.0, baseline=0.8, device_sd=0.03, inference_sd=0.15, mean_inferences=100)
METRICS = {
    # name: (devices, margin, direction, what the threshold gate watches)
    "confidence": (CONFIDENCE, 0.01, "higher_is_better", ERRORS),
    "error_rate": (ERRORS, 0.01, "lower_is_better", None),
}
# Abort above the fleet's error rate plus 1 point once 200 canaries reported.
THRESHOLD = ThresholdGate(threshold=ERRORS.control_mean() + 0.01, min_treated=200, stage_devices=1)


def degraded(metric, margins):
    _, margin, direction, _ = METRICS[metric]
    return -margins * margin if direction == "higher_is_better" else margins * margin


@functools.cache
def plan(metric, alpha):
    """The sequential and the single-look plan, from device spreads measured on a pilot draw."""
    devices, margin, _, _ = METRICS[metric]
    rng = np.random.default_rng(7)
    spreads = []
    for delta in (degraded(metric, 1.0), 0.0):
        values, treated = simulate_device_values(rng, replace(devices, devices=50_000, delta=delta), 1)
        spreads.append(values[treated if delta else ~treated].std(ddof=1))
    stage = plan_stage(
        margin=margin,
        device_sd=spreads[0],
        control_sd=spreads[1],
        holdout_fraction=HOLDOUT,
        arrival_rate_per_hour=200,
        alpha=alpha,
    )
    fixed = fixed_horizon_devices(
        margin=margin, device_sd=spreads[0], control_sd=spreads[1], holdout_fraction=HOLDOUT, alpha=alpha
    )
    return stage.devices_needed, fixed


@functools.cache
def compare(metric, alpha, margins):
    """All four procedures on the same RUNS rollouts, looking until twice the sequential plan."""
    devices, margin, direction, watched = METRICS[metric]
    planned, fixed = plan(metric, alpha)
    return compare_gates(
        np.random.default_rng(20261207),
        replace(devices, devices=2 * planned, delta=degraded(metric, margins)),
        runs=RUNS,
        margin=margin,
        direction=direction,
        planned_devices=planned,
        fixed_devices=fixed,
        threshold_gate=replace(THRESHOLD, stage_devices=fixed, watched=watched),
        alpha=alpha,
        look_every=LOOK_EVERY,
    )


@pytest.mark.parametrize(("metric", "alpha"), [("confidence", 0.01), ("confidence", 0.05), ("error_rate", 0.01)])
def test_no_difference_rolls_back_at_most_alpha_while_naive_peeking_significantly_exceeds_it(metric, alpha):
    result = compare(metric, alpha, 0.0)
    ours, naive = result.sequential, result.naive_peeking
    ours_ci = clopper_pearson(ours.count("rollback"), RUNS)
    naive_ci = clopper_pearson(naive.count("rollback"), RUNS)
    report = f"{metric} alpha={alpha}: ours {ours.rate('rollback'):.4f} {ours_ci}, naive {naive.rate('rollback'):.4f}"
    assert ours.rate("rollback") <= alpha, report
    assert ours_ci[0] <= alpha, report
    assert naive_ci[0] > alpha, report  # the whole 95% interval lies above alpha


@pytest.mark.parametrize("metric", ["confidence", "error_rate"])
def test_a_degradation_of_the_margin_rolls_back_within_the_planned_stage_duration(metric):
    planned, fixed = plan(metric, 0.01)
    result = compare(metric, 0.01, 1.0)
    power = float(np.mean(result.sequential.devices_to("rollback") <= planned))
    fixed_power = result.fixed_horizon.rate("rollback")
    assert power >= 0.9, f"{metric}: rolled back by {planned} devices in {power:.4f} of runs"
    # The baseline is planned for the same 90% power at its one look, so it is no straw man.
    assert fixed_power >= 0.84, f"{metric}: fixed horizon at {fixed} devices caught {fixed_power:.4f}"


@pytest.mark.parametrize("margins", [1.0, 2.0])
def test_the_threshold_gate_misses_a_silent_degradation_that_ours_catches(margins):
    planned, _ = plan("confidence", 0.01)
    result = compare("confidence", 0.01, margins)
    missed = 1.0 - result.threshold.rate("rollback")
    caught = float(np.mean(result.sequential.devices_to("rollback") <= planned))
    assert missed >= 0.99, f"threshold gate rolled back {1 - missed:.4f}"
    # It sees nothing: its aborts are the same false alarms as with no regression at all.
    assert result.threshold.rate("rollback") == compare("confidence", 0.01, 0.0).threshold.rate("rollback")
    assert caught >= 0.9, f"ours rolled back {caught:.4f} by the plan"


@pytest.mark.parametrize("metric", ["confidence", "error_rate"])
def test_at_twice_the_margin_ours_rolls_back_in_under_0_6_of_the_fixed_horizon_time(metric):
    _, fixed = plan(metric, 0.01)
    result = compare(metric, 0.01, 2.0)
    median = float(np.median(result.sequential.devices_to("rollback")))
    assert result.fixed_horizon.rate("rollback") >= 0.99
    assert median <= 0.6 * fixed, f"{metric}: median rollback at {median} devices, fixed horizon {fixed}"
