"""Experiments under continuous monitoring, simulated: false winners, power at the planned size, devices needed, SRM.

The fleet has strong device-to-device variation (device sd 1 against a
within-device sd of 0.2 over one exposure); every run is read after every
device. Error shares are checked with the 95 % Clopper-Pearson interval: a
false-winner share is fine when even its upper bound stays under alpha.
"""

from datetime import timedelta

import pytest

from modelfleet.stats import (
    ExperimentScenario,
    clopper_pearson,
    paired_difference_sd,
    plan_experiment,
    simulate_experiments,
)

pytestmark = pytest.mark.slow

ALPHA, POWER = 0.05, 0.8
DEVICE_SD, WITHIN_SD = 1.0, 0.2
THREE_ARMS = (0.4, 0.3, 0.3)
TREND = 0.05  # per window: as large as the time-slice effect below, in every window


def plan(kind, effect, shares=(0.5, 0.5)):
    if kind == "ab":
        variance = {"device_sd": (DEVICE_SD**2 + WITHIN_SD**2) ** 0.5, "shares": shares}
    else:
        variance = {"difference_sd": paired_difference_sd(kind, WITHIN_SD)}
    return plan_experiment(kind, effect=effect, exposure=timedelta(days=1), alpha=ALPHA, power=POWER, **variance)


def scenario(devices, effect, **changes):
    return ExperimentScenario(
        devices=devices, effect=effect, device_sd=DEVICE_SD, within_sd=WITHIN_SD, trend=TREND, **changes
    )


# kind, devices per run, runs, shares: A/A runs read after every device.
A_A = [
    ("ab", 1500, 1000, THREE_ARMS),
    ("shadow", 600, 2000, (0.5, 0.5)),
    ("time_slice", 600, 1000, (0.5, 0.5)),
]


@pytest.mark.parametrize(("kind", "devices", "runs", "shares"), A_A)
def test_an_a_a_experiment_names_a_false_winner_at_most_alpha_of_the_time(rng, kind, devices, runs, shares):
    sim = simulate_experiments(
        rng, scenario(devices, 0.0, shares=shares), kind, runs=runs, planned_devices=devices, alpha=ALPHA
    )
    assert clopper_pearson(sim.count("winner"), runs)[1] <= ALPHA
    assert clopper_pearson(sim.count("winner") + sim.count("loser"), runs)[1] <= ALPHA
    assert sim.count("stopped") <= 0.005 * runs  # the SRM stop (p < 0.001) seldom fires on a healthy split


# kind, effect (the plan's minimum detectable effect), shares
AT_THE_MDE = [("ab", 0.25, THREE_ARMS), ("shadow", 0.05, (0.5, 0.5)), ("time_slice", 0.05, (0.5, 0.5))]


@pytest.mark.parametrize(("kind", "effect", "shares"), AT_THE_MDE)
def test_an_effect_at_the_mde_is_found_with_at_least_the_planned_power(rng, kind, effect, shares):
    planned = plan(kind, effect, shares)
    sim = simulate_experiments(
        rng,
        scenario(planned.devices_needed, effect, shares=shares),
        kind,
        runs=1000,
        planned_devices=planned.devices_needed,
        alpha=ALPHA,
    )
    assert sim.rate("winner") >= POWER
    assert clopper_pearson(int((sim.winner > 1).sum()), 1000)[1] <= ALPHA  # a null variant seldom wins


def test_paired_designs_need_far_fewer_devices_than_ab_on_a_fleet_of_different_devices(rng):
    effect, runs = 0.1, 400
    needed = {}
    for kind in ("ab", "shadow", "time_slice"):
        planned = plan(kind, effect)
        sim = simulate_experiments(
            rng,
            scenario(2 * planned.devices_needed, effect),
            kind,
            runs=runs,
            planned_devices=planned.devices_needed,
            alpha=ALPHA,
        )
        needed[kind] = sim.devices_for(POWER)
        assert 0 < needed[kind] <= planned.devices_needed
    assert needed["shadow"] * 4 < needed["ab"]
    assert needed["time_slice"] * 4 < needed["ab"]


def test_a_variant_whose_devices_fail_to_report_stops_the_experiment_on_sample_ratio_mismatch(rng):
    # A fifth of variant 2's devices never report (they crash on the new model, or lose their uplink).
    skewed = scenario(5000, 0.0, shares=THREE_ARMS, report_probability=(1.0, 1.0, 0.8))
    sim = simulate_experiments(rng, skewed, "ab", runs=200, planned_devices=5000, alpha=ALPHA)
    assert sim.rate("stopped") >= 0.95
    assert sim.count("winner") <= 0.05 * 200
