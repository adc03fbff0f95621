"""Experiment analyses on clear-cut fleets: A/B with n variants, shadow, time-slice, the schedule and the planner."""

import math
from datetime import timedelta

import numpy as np
import pytest

from modelfleet.stats import (
    ExperimentMetric,
    ShadowLabels,
    adjust_p_values,
    analyze_ab,
    analyze_shadow,
    analyze_time_slice,
    benjamini_hochberg,
    fleet_variance,
    holm,
    paired_difference_sd,
    plan_experiment,
    time_slice_schedule,
    within_device_effects,
)
from modelfleet.stats._experiments import VERDICTS, experiment_codes, verdict_codes

ACCURACY = ExperimentMetric("accuracy", "higher_is_better")
LATENCY = ExperimentMetric("latency_ms", "lower_is_better")
THREE_ARMS = (0.4, 0.3, 0.3)


def ab_fleet(rng, devices, *, accuracy_lift=(0.0, 0.0), latency_lift=(0.0, 0.0), shares=THREE_ARMS):
    """Devices in arrival order: arm, accuracy (device spread 0.05) and latency (device spread 4 ms)."""
    arms = rng.choice(len(shares), size=devices, p=shares)
    lift = np.concatenate([[0.0], accuracy_lift])[arms]
    slow = np.concatenate([[0.0], latency_lift])[arms]
    accuracy = 0.85 + lift + 0.05 * rng.standard_normal(devices)
    latency = 40.0 + slow + 4.0 * rng.standard_normal(devices)
    return {"accuracy": accuracy, "latency_ms": latency}, arms


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_adjusting_many_families_at_once_matches_the_one_family_procedures(rng, correction):
    p = rng.uniform(0, 0.2, size=(50, 6))
    one = holm if correction == "holm" else benjamini_hochberg
    expected = np.array([one(row, alpha=0.05).adjusted for row in p])
    np.testing.assert_allclose(adjust_p_values(p, correction), expected)


def test_an_unknown_correction_is_refused():
    with pytest.raises(ValueError, match="correction"):
        adjust_p_values([0.1, 0.2], "bonferroni")


def test_ab_names_the_better_variant_the_winner_with_lifts_for_every_metric_and_variant(rng):
    values, arms = ab_fleet(rng, 3000, accuracy_lift=(0.02, 0.0))
    result = analyze_ab(
        values, arms, metrics=[ACCURACY, LATENCY], shares=THREE_ARMS, planned_devices=3000, names=["v1", "v2", "v3"]
    )
    assert result.verdict == "winner"
    assert result.winner == "v2"
    assert [(lift.variant, lift.metric) for lift in result.lifts] == [
        ("v2", "accuracy"),
        ("v2", "latency_ms"),
        ("v3", "accuracy"),
        ("v3", "latency_ms"),
    ]
    won = result.lifts[0]
    assert won.better
    assert won.lower < 0.02 < won.upper
    assert won.relative == pytest.approx(won.estimate / won.control_mean)
    assert won.relative_lower < 0.02 / 0.85 < won.relative_upper
    assert won.adjusted_p_value <= 0.05
    assert [v.verdict for v in result.variants] == ["winner", "inconclusive"]
    assert "beats the control" in result.reason
    assert result.devices == tuple(int(np.sum(arms == a)) for a in range(3))
    assert not result.sample_ratio.mismatch


def test_ab_a_variant_better_on_the_primary_but_slower_is_a_loser(rng):
    values, arms = ab_fleet(rng, 3000, accuracy_lift=(0.02, 0.0), latency_lift=(3.0, 0.0))
    result = analyze_ab(values, arms, metrics=[ACCURACY, LATENCY], shares=THREE_ARMS, planned_devices=3000)
    assert result.variants[0].verdict == "loser"
    assert "latency_ms" in result.variants[0].reason
    assert result.verdict == "inconclusive"  # the other variant is neither, so the experiment has no winner yet
    assert result.winner is None


def test_ab_where_every_variant_is_worse_is_a_loser(rng):
    values, arms = ab_fleet(rng, 3000, accuracy_lift=(-0.02, -0.03))
    result = analyze_ab(values, arms, metrics=[ACCURACY], shares=THREE_ARMS, planned_devices=3000)
    assert result.verdict == "loser"
    assert all(lift.worse for lift in result.lifts)


def test_ab_stops_on_a_sample_ratio_mismatch_when_one_variants_devices_fail_to_report(rng):
    values, arms = ab_fleet(rng, 6000, accuracy_lift=(0.02, 0.0))
    reporting = (arms != 2) | (rng.random(arms.size) < 0.8)  # a fifth of variant 2's devices never report
    result = analyze_ab(
        {name: v[reporting] for name, v in values.items()},
        arms[reporting],
        metrics=[ACCURACY],
        shares=THREE_ARMS,
        planned_devices=6000,
    )
    assert result.verdict == "stopped"
    assert result.winner is None
    assert result.sample_ratio_p_value < 0.001
    assert result.sample_ratio.mismatch
    assert "sample-ratio mismatch" in result.reason
    assert "variant 2" in result.reason
    assert result.lifts[0].better  # the numbers are still shown, but they name no winner


def test_ab_before_the_burn_in_has_infinite_intervals_and_no_verdict(rng):
    values, arms = ab_fleet(rng, 30, accuracy_lift=(0.5, 0.0))
    result = analyze_ab(values, arms, metrics=[ACCURACY], shares=THREE_ARMS, planned_devices=3000)
    assert result.verdict == "inconclusive"
    assert all(math.isinf(lift.lower) and math.isinf(lift.upper) for lift in result.lifts)
    assert all(lift.p_value == 1.0 for lift in result.lifts)


def test_ab_can_be_read_at_any_time_and_significance_never_goes_away(rng):
    values, arms = ab_fleet(rng, 3000, accuracy_lift=(0.015, 0.0))
    adjusted = []
    for n in range(200, 3001, 200):
        result = analyze_ab(
            {k: v[:n] for k, v in values.items()}, arms[:n], metrics=[ACCURACY], shares=THREE_ARMS, planned_devices=3000
        )
        adjusted.append(result.lifts[0].adjusted_p_value)
    adjusted = np.array(adjusted)
    assert np.all(adjusted[1:] <= adjusted[:-1] * (1 + 1e-9))  # min over looks: it never rises (up to rounding)
    assert adjusted[0] > 0.05 >= adjusted[-1]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"variants": np.full(100, 3)}, "arm indices"),
        ({"values": {"accuracy": np.zeros(99)}}, "one value per device"),
        ({"values": {"other": np.zeros(100)}}, "no values for metric"),
        ({"shares": (1.0,)}, "shares"),
        ({"names": ["a", "b"]}, "names"),
    ],
)
def test_ab_refuses_inputs_that_do_not_describe_an_experiment(changes, match):
    arguments = {"values": {"accuracy": np.zeros(100)}, "variants": np.arange(100) % 3, "shares": THREE_ARMS}
    arguments |= changes
    with pytest.raises(ValueError, match=match):
        analyze_ab(
            arguments.pop("values"), arguments.pop("variants"), metrics=[ACCURACY], planned_devices=100, **arguments
        )


def shadow_fleet(rng, devices, *, accuracy_gain=0.0, latency_gain=0.0, labelled=200):
    """Per-device shadow aggregates: both models on the same inputs of each device."""
    level = np.clip(0.85 + 0.08 * rng.standard_normal(devices), 0.3, 0.97)
    n = np.full(devices, labelled)
    active_correct = rng.binomial(n, level)
    flips = rng.binomial(n, 0.05)  # inferences where the two disagree on correctness
    only_candidate = rng.binomial(flips, np.clip(0.5 + accuracy_gain * 10, 0, 1))
    only_active = flips - only_candidate
    latency = 40.0 + 6.0 * rng.standard_normal(devices)
    return {
        "n_compared": n,
        "n_agree": n - rng.binomial(n, 0.1),
        "active_confidence": level,
        "candidate_confidence": level + 0.01,
        "active_latency_ms": latency,
        "candidate_latency_ms": latency + latency_gain + rng.standard_normal(devices),
    }, ShadowLabels(n, active_correct, np.minimum(only_active, active_correct), only_candidate)


def test_shadow_with_labels_names_a_more_accurate_candidate_the_winner_from_discordant_pairs(rng):
    aggregates, labels = shadow_fleet(rng, 400, accuracy_gain=0.02)
    result = analyze_shadow(**aggregates, labels=labels, planned_devices=400)
    assert result.analysis.verdict == "winner"
    accuracy = result.analysis.lifts[0]
    assert accuracy.metric == "accuracy"
    assert accuracy.primary
    expected = np.mean(
        (np.asarray(labels.only_candidate_correct) - np.asarray(labels.only_active_correct)) / labels.n_labelled
    )
    assert accuracy.estimate == pytest.approx(expected)
    assert result.discordant == (int(np.sum(labels.only_active_correct)), int(np.sum(labels.only_candidate_correct)))
    assert result.agreement.lower < 0.9 < result.agreement.upper
    assert result.confidence_difference.estimate == pytest.approx(0.01)


def test_shadow_without_labels_names_no_winner_but_catches_a_slower_candidate(rng):
    aggregates, _ = shadow_fleet(rng, 400)
    result = analyze_shadow(**aggregates, planned_devices=400)
    assert result.analysis.verdict == "inconclusive"
    assert "no labels" in result.analysis.reason
    assert [lift.metric for lift in result.analysis.lifts] == ["latency_ms"]
    aggregates["candidate_latency_ms"] = aggregates["candidate_latency_ms"] * 1.6  # beyond the 25 % margin
    slower = analyze_shadow(**aggregates, planned_devices=400)
    assert slower.analysis.verdict == "loser"
    assert slower.candidate_latency_ms / slower.active_latency_ms == pytest.approx(1.6, abs=0.05)


def test_shadow_leaves_out_devices_that_compared_nothing(rng):
    aggregates, labels = shadow_fleet(rng, 100)
    aggregates["n_compared"] = np.where(np.arange(100) < 10, 0, aggregates["n_compared"])
    aggregates["n_agree"] = np.where(np.arange(100) < 10, 0, aggregates["n_agree"])
    result = analyze_shadow(**aggregates, labels=labels, planned_devices=100)
    assert result.analysis.devices == (90,)
    assert result.agreement.devices == 90


def test_shadow_refuses_more_agreements_than_comparisons(rng):
    aggregates, _ = shadow_fleet(rng, 50)
    aggregates["n_agree"] = aggregates["n_compared"] + 1
    with pytest.raises(ValueError, match="n_agree"):
        analyze_shadow(**aggregates, planned_devices=50)


def test_the_schedule_is_deterministic_per_device_and_balanced_in_abba_blocks():
    devices = [f"dev-{i}" for i in range(400)]
    schedule = time_slice_schedule(devices, windows=8, salt="exp-1")
    np.testing.assert_array_equal(schedule, time_slice_schedule(devices, windows=8, salt="exp-1"))
    np.testing.assert_array_equal(schedule[7], time_slice_schedule([devices[7]], windows=8, salt="exp-1")[0])
    assert {tuple(row) for row in schedule} == {(0, 1, 1, 0) * 2, (1, 0, 0, 1) * 2}
    # A linear trend adds the same to both versions: their window positions sum to the same number.
    positions = np.arange(8)
    assert np.all((schedule == 0) @ positions == (schedule == 1) @ positions)
    assert 0.4 < np.mean(schedule[:, 0]) < 0.6  # across the fleet, each version leads about half the time
    assert not np.array_equal(schedule, time_slice_schedule(devices, windows=8, salt="exp-2"))


def test_the_schedule_of_three_versions_reflects_each_order():
    schedule = time_slice_schedule([f"d{i}" for i in range(60)], windows=6, salt="s", versions=3)
    assert {tuple(row) for row in schedule} == {(0, 1, 2, 2, 1, 0), (1, 2, 0, 0, 2, 1), (2, 0, 1, 1, 0, 2)}


@pytest.mark.parametrize(("windows", "versions"), [(6, 2), (2, 2), (4, 1)])
def test_a_schedule_with_incomplete_blocks_is_refused(windows, versions):
    with pytest.raises(ValueError, match="multiple"):
        time_slice_schedule(["d"], windows=windows, salt="s", versions=versions)


def test_a_linear_trend_cancels_even_when_a_window_is_missing():
    schedule = np.array([[0, 1, 1, 0, 0, 1, 1, 0], [1, 0, 0, 1, 1, 0, 0, 1]])
    window = np.arange(8)
    values = np.array([5.0, -3.0])[:, None] + 0.7 * window + 0.25 * schedule
    values[1, 2] = np.nan
    effects, control = within_device_effects(values, schedule, trend="linear")
    np.testing.assert_allclose(effects[:, 0], [0.25, 0.25])
    np.testing.assert_allclose(control[0], 5.0 + 0.7 * 3.5)
    plain, _ = within_device_effects(values, schedule, trend="none")
    assert plain[0, 0] == pytest.approx(0.25)  # complete blocks: the plain difference is exact too
    assert abs(plain[1, 0] - 0.25) > 0.1  # with a window missing it is not


def test_a_device_that_never_ran_a_version_has_no_effect():
    schedule = np.array([[0, 0, 0, 0]])
    effects, _ = within_device_effects(np.ones((1, 4)), schedule)
    assert np.isnan(effects[0, 0])


def test_time_slice_finds_the_effect_despite_a_strong_trend_and_device_spread(rng):
    devices = 300
    schedule = time_slice_schedule([f"d{i}" for i in range(devices)], windows=8, salt="t")
    level = 0.8 + 0.1 * rng.standard_normal((devices, 1))
    values = level + 0.01 * np.arange(8) + 0.01 * schedule + 0.01 * rng.standard_normal((devices, 8))
    result = analyze_time_slice({"accuracy": values}, schedule, metrics=[ACCURACY], planned_devices=devices)
    assert result.verdict == "winner"
    assert result.lifts[0].lower < 0.01 < result.lifts[0].upper
    assert result.devices == (devices,)


def test_time_slice_refuses_a_schedule_that_is_not_devices_by_windows():
    with pytest.raises(ValueError, match="schedule"):
        analyze_time_slice({"accuracy": np.zeros(4)}, np.zeros(4, dtype=int), metrics=[ACCURACY], planned_devices=10)


def test_paired_designs_drop_the_device_spread_from_the_plan():
    common = {"effect": 0.01, "exposure": timedelta(days=2), "alpha": 0.05, "power": 0.8}
    ab = plan_experiment("ab", device_sd=0.08, **common)
    shadow = plan_experiment(
        "shadow", difference_sd=paired_difference_sd("shadow", 0.02, pair_correlation=0.5), **common
    )
    time_slice = plan_experiment("time_slice", difference_sd=paired_difference_sd("time_slice", 0.02), **common)
    assert ab.feasible
    assert shadow.devices_needed < time_slice.devices_needed < ab.devices_needed / 10
    assert ab.devices_per_arm == (ab.devices_needed // 2, ab.devices_needed // 2) or sum(ab.devices_per_arm) in {
        ab.devices_needed,
        ab.devices_needed + 1,
    }
    assert time_slice.stream_sd == pytest.approx(0.04)
    assert shadow.stream_sd == pytest.approx(0.02)


def test_a_plan_the_fleet_cannot_power_is_refused_with_what_it_could_detect():
    plan = plan_experiment("ab", effect=0.01, device_sd=0.08, exposure=timedelta(days=1), available_devices=500)
    assert not plan.feasible
    assert "reaches only 500" in plan.reason
    assert plan.minimum_detectable_effect > 0.01
    assert f"{plan.minimum_detectable_effect:.4g}" in plan.reason


def test_a_plan_longer_than_its_limit_is_refused():
    plan = plan_experiment(
        "shadow",
        effect=0.01,
        difference_sd=0.03,
        exposure=timedelta(days=1),
        devices_per_hour=2.0,
        max_duration=timedelta(days=2),
    )
    assert not plan.feasible
    assert "longer than the limit" in plan.reason
    assert plan.duration == timedelta(days=1) + timedelta(hours=plan.devices_needed / 2.0)


def test_more_variants_and_metrics_need_more_devices_per_comparison():
    one = plan_experiment("ab", effect=0.01, device_sd=0.08, exposure=timedelta(days=1))
    many = plan_experiment("ab", effect=0.01, device_sd=0.08, exposure=timedelta(days=1), shares=(1, 1, 1), metrics=2)
    assert many.comparisons == 4
    assert many.devices_needed > one.devices_needed * 1.5


@pytest.mark.parametrize(
    ("kind", "arguments", "match"),
    [
        ("ab", {}, "device_sd"),
        ("shadow", {"device_sd": 1.0}, "difference_sd"),
        ("canary", {"device_sd": 1.0}, "kind"),
        ("ab", {"device_sd": 1.0, "effect": 0.0}, "effect"),
    ],
)
def test_a_plan_without_the_variance_its_kind_needs_is_refused(kind, arguments, match):
    arguments = {"effect": 0.1, "exposure": timedelta(days=1)} | arguments
    with pytest.raises(ValueError, match=match):
        plan_experiment(kind, **arguments)


@pytest.mark.parametrize("seed", range(12))
def test_the_vectorized_verdict_rule_of_the_simulator_agrees_with_the_analysis(seed):
    rng = np.random.default_rng(seed)
    lift = tuple(rng.choice([-0.015, 0.0, 0.015], size=2))
    slow = tuple(rng.choice([0.0, 1.5], size=2))
    values, arms = ab_fleet(rng, 2500, accuracy_lift=lift, latency_lift=slow)
    result = analyze_ab(values, arms, metrics=[ACCURACY, LATENCY], shares=THREE_ARMS, planned_devices=2500)
    lifts = result.lifts
    adjusted = np.array([lift.adjusted_p_value for lift in lifts])
    oriented = np.array([1.0 if lift.better else -1.0 if lift.worse else 0.0 for lift in lifts])
    codes = verdict_codes(
        adjusted,
        oriented,
        variant_of=np.array([0, 0, 1, 1]),
        primary=np.array([True, False, True, False]),
        variants=2,
        alpha=0.05,
    )
    assert [VERDICTS[int(c)] for c in codes] == [v.verdict for v in result.variants]
    assert VERDICTS[int(experiment_codes(codes))] == result.verdict


def test_the_fleet_variance_reads_the_device_spread_and_the_within_device_noise(rng):
    devices, windows = 4000, 8
    level = 0.08 * rng.standard_normal((devices, 1))
    values = 0.85 + level + 0.02 * np.sqrt(windows) * rng.standard_normal((devices, windows))
    values[::7, 3] = np.nan  # some windows never reported
    variance = fleet_variance(values)
    assert variance.devices == devices
    assert variance.within_sd == pytest.approx(0.02, rel=0.03)
    assert variance.device_sd == pytest.approx(np.hypot(0.08, 0.02), rel=0.05)


def test_the_fleet_variance_needs_two_devices_with_two_windows():
    with pytest.raises(ValueError, match="two devices"):
        fleet_variance(np.array([[1.0, 2.0], [3.0, np.nan]]))


def test_ab_with_benjamini_hochberg_is_never_stricter_than_holm(rng):
    values, arms = ab_fleet(rng, 3000, accuracy_lift=(0.01, 0.012))
    common = {"metrics": [ACCURACY, LATENCY], "shares": THREE_ARMS, "planned_devices": 3000}
    by_holm = analyze_ab(values, arms, correction="holm", **common)
    by_bh = analyze_ab(values, arms, correction="bh", **common)
    assert by_bh.correction == "bh"
    for holm_lift, bh_lift in zip(by_holm.lifts, by_bh.lifts, strict=True):
        assert bh_lift.p_value == holm_lift.p_value
        assert bh_lift.adjusted_p_value <= holm_lift.adjusted_p_value


@pytest.mark.parametrize("seed", range(8))
def test_under_holm_an_interval_that_excludes_zero_is_significant(seed):
    rng = np.random.default_rng(seed)
    values, arms = ab_fleet(rng, 1500, accuracy_lift=(0.008, -0.008), latency_lift=(0.8, 0.0))
    result = analyze_ab(values, arms, metrics=[ACCURACY, LATENCY], shares=THREE_ARMS, planned_devices=1500)
    excluding = [lift for lift in result.lifts if lift.lower > 0 or lift.upper < 0]
    assert all(lift.significant for lift in excluding)
    assert all(
        (lift.lower > 0) == (lift.better if lift.direction == "higher_is_better" else lift.worse) for lift in excluding
    )


@pytest.mark.parametrize("devices", [0, 1, 2])
def test_before_enough_devices_report_every_kind_reads_inconclusive_without_warnings(devices):
    arms = np.arange(devices) % 3
    ab = analyze_ab({"accuracy": np.ones(devices)}, arms, metrics=[ACCURACY], shares=THREE_ARMS, planned_devices=100)
    schedule = np.tile([0, 1, 1, 0], (devices, 1))
    sliced = analyze_time_slice({"accuracy": np.ones((devices, 4))}, schedule, metrics=[ACCURACY], planned_devices=10)
    ones = np.ones(devices)
    shadow = analyze_shadow(
        n_compared=ones,
        n_agree=ones,
        active_confidence=ones,
        candidate_confidence=ones,
        active_latency_ms=ones,
        candidate_latency_ms=ones,
        planned_devices=10,
    )
    for result in (ab, sliced, shadow.analysis):
        assert result.verdict == "inconclusive"
        assert all(lift.lower == -math.inf and lift.upper == math.inf for lift in result.lifts)
        assert all(lift.p_value == 1.0 for lift in result.lifts)


def test_without_the_reflected_order_a_time_trend_would_name_a_winner_that_is_not_there(rng):
    devices, drift = 400, 0.01  # no effect at all; accuracy drifts up 0.01 per window
    level = 0.8 + 0.1 * rng.standard_normal((devices, 1))
    values = level + drift * np.arange(4) + 0.01 * rng.standard_normal((devices, 4))
    common = {"metrics": [ACCURACY], "planned_devices": devices}
    naive_order = np.tile([0, 0, 1, 1], (devices, 1))  # AABB: the candidate always runs later
    assert analyze_time_slice({"accuracy": values}, naive_order, trend="none", **common).verdict == "winner"
    balanced = time_slice_schedule([f"d{i}" for i in range(devices)], windows=4, salt="s")
    assert analyze_time_slice({"accuracy": values}, balanced, trend="none", **common).verdict == "inconclusive"
    assert analyze_time_slice({"accuracy": values}, balanced, **common).verdict == "inconclusive"
