"""Stage planning: the closed form, feasibility against the fleet and the clock."""

import math
from datetime import timedelta

import pytest

from modelfleet.stats import minimum_detectable_effect, plan_stage
from modelfleet.stats._boundary import standardized_boundary_constant


def test_the_plan_is_the_normal_power_equation_with_the_sequential_constant():
    plan = plan_stage(margin=0.5, device_sd=2.0, holdout_fraction=0.2, arrival_rate_per_hour=50, alpha=0.01, power=0.9)
    stream_sd = math.sqrt(4 / 0.8 + 4 / 0.2)
    z = 1.2815516 + standardized_boundary_constant(0.01)
    assert plan.stream_sd == pytest.approx(stream_sd)
    assert plan.devices_needed == math.ceil((z * stream_sd / 0.5) ** 2) + 1
    assert plan.treatment_devices + plan.control_devices == plan.devices_needed
    assert plan.control_devices == pytest.approx(0.2 * plan.devices_needed, abs=1)
    assert plan.duration == timedelta(hours=plan.devices_needed / 50)
    assert plan.feasible
    assert plan.minimum_detectable_effect == pytest.approx(0.5, rel=0.01)


def test_a_sequential_plan_costs_more_devices_than_a_single_look_would():
    plan = plan_stage(margin=0.2, device_sd=1.0, holdout_fraction=0.5, arrival_rate_per_hour=10, alpha=0.05)
    single_look = ((1.2816 + 1.6449) * 2.0 / 0.2) ** 2
    assert 1.5 * single_look < plan.devices_needed < 2.0 * single_look


def test_a_fleet_too_small_for_the_margin_is_infeasible_and_says_what_it_can_detect():
    plan = plan_stage(margin=0.1, device_sd=1.0, holdout_fraction=0.1, arrival_rate_per_hour=10, available_devices=500)
    assert not plan.feasible
    assert "500" in plan.reason
    assert plan.minimum_detectable_effect == pytest.approx(
        minimum_detectable_effect(500, plan.stream_sd, alpha=0.01, power=0.9)
    )
    assert plan.minimum_detectable_effect > 0.1
    assert f"{plan.minimum_detectable_effect:.4g}" in plan.reason


def test_a_stage_that_would_outlast_its_time_limit_is_infeasible():
    plan = plan_stage(
        margin=0.2,
        device_sd=1.0,
        holdout_fraction=0.5,
        arrival_rate_per_hour=5,
        max_duration=timedelta(days=1),
    )
    assert not plan.feasible
    assert "longer than the limit" in plan.reason


def test_the_burn_in_sets_a_floor_on_small_stages():
    plan = plan_stage(margin=10.0, device_sd=1.0, holdout_fraction=0.1, arrival_rate_per_hour=1)
    assert plan.devices_needed == math.ceil(2 * 20 / 0.1)


@pytest.mark.parametrize(
    "change",
    [{"margin": 0.0}, {"holdout_fraction": 1.0}, {"device_sd": 0.0}, {"power": 1.0}, {"arrival_rate_per_hour": 0}],
)
def test_impossible_inputs_are_refused(change):
    kwargs = {"margin": 0.2, "device_sd": 1.0, "holdout_fraction": 0.5, "arrival_rate_per_hour": 5} | change
    with pytest.raises(ValueError):  # noqa: PT011 - the message names whichever input is wrong
        plan_stage(**kwargs)


def test_the_plan_uses_the_gates_variance_floor_when_the_large_arm_is_the_more_spread_out():
    # 80% canaries, each twice as spread out as a holdout device: the pooled floor of ADR 0004 binds.
    plan = plan_stage(margin=0.5, device_sd=2.0, control_sd=1.0, holdout_fraction=0.2, arrival_rate_per_hour=50)
    efficient = math.sqrt(4 / 0.8 + 1 / 0.2)
    floor = math.sqrt((0.8 * 4 + 0.2 * 1) / (0.8 * 0.2))
    assert floor > efficient
    assert plan.stream_sd == pytest.approx(floor)


def test_the_floor_does_not_bind_when_the_small_arm_is_the_more_spread_out():
    plan = plan_stage(margin=0.5, device_sd=1.0, control_sd=2.0, holdout_fraction=0.2, arrival_rate_per_hour=50)
    assert plan.stream_sd == pytest.approx(math.sqrt(1 / 0.8 + 4 / 0.2))
