"""The confidence sequence on a device stream: the AIPW stream, the burn-in, the bounds and p-value duality."""

import math

import numpy as np
import pytest

from modelfleet.stats import (
    always_valid_p_value,
    confidence_sequence,
    confidence_sequence_path,
    difference_stream,
)


def stream(rng, devices, p, delta, *, baseline=50.0, sd=5.0):
    treated = rng.random(devices) < p
    values = baseline + delta * treated + sd * rng.standard_normal(devices)
    return values, treated


def test_the_stream_is_unbiased_for_the_difference_whatever_the_level_of_the_metric(rng):
    # Latency-like values around 50 ms: an un-centred IPW stream would have variance ~50²/(p(1-p)).
    treated = rng.random((2000, 400)) < 0.9
    values = 50.0 - 1.5 * treated + 5.0 * rng.standard_normal((2000, 400))
    psi = difference_stream(values, treated, 0.9)
    assert psi.shape == (2000, 399)
    assert psi.mean() == pytest.approx(-1.5, abs=0.05)
    efficient = math.sqrt(25 / 0.9 + 25 / 0.1)
    assert psi[:, 100:].std() == pytest.approx(efficient, rel=0.05)


def test_the_first_device_only_seeds_the_centering():
    values = np.array([10.0, 12.0, 8.0])
    treated = np.array([1, 1, 0])
    # device 2: m1 = m0 = 10 (pooled), Z=1 -> (12 - 10)/0.5; device 3: m1 = 11, m0 = 11 (pooled), Z=0.
    expected = [(12 - 10) / 0.5, 0.0 - (8 - 11) / 0.5]
    np.testing.assert_allclose(difference_stream(values, treated, 0.5), expected)


def test_bounds_stay_infinite_until_each_arm_has_its_burn_in(rng):
    values, treated = stream(rng, 300, 0.5, delta=0.0)
    path = confidence_sequence_path(
        values, treated, treatment_probability=0.5, planned_devices=300, min_devices_per_arm=20
    )
    ready = (path.n_treatment >= 20) & (path.n_control >= 20)
    assert np.all(np.isinf(path.lower[~ready]))
    assert np.all(np.isinf(path.upper[~ready]))
    assert np.all(np.isfinite(path.lower[ready]))
    assert np.all(path.lower[ready] < path.estimate[ready])
    assert np.all(path.estimate[ready] < path.upper[ready])


def test_the_latest_confidence_sequence_is_the_last_look_of_the_path(rng):
    values, treated = stream(rng, 500, 0.7, delta=2.0)
    kwargs = {"treatment_probability": 0.7, "planned_devices": 500, "alpha": 0.01}
    cs = confidence_sequence(values, treated, **kwargs)
    path = confidence_sequence_path(values, treated, **kwargs)
    assert cs == path.at(-1)
    assert cs.ready
    assert cs.n_treatment + cs.n_control == 500
    assert cs.lower < 2.0 < cs.upper


def test_each_side_uses_its_own_alpha(rng):
    values, treated = stream(rng, 500, 0.5, delta=0.0)
    cs = confidence_sequence(
        values, treated, treatment_probability=0.5, planned_devices=500, alpha=0.2 / 2, alpha_upper=0.001
    )
    assert cs.upper - cs.estimate > cs.estimate - cs.lower
    assert (cs.alpha_lower, cs.alpha_upper) == (0.1, 0.001)


def test_the_interval_narrows_like_one_over_root_n(rng):
    values, treated = stream(rng, 4000, 0.5, delta=0.0)
    path = confidence_sequence_path(values, treated, treatment_probability=0.5, planned_devices=4000)
    width = path.upper - path.lower
    assert width[3999] / width[999] == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize(("alternative", "side"), [("less", "upper"), ("greater", "lower")])
def test_a_one_sided_p_value_falls_below_alpha_exactly_when_its_bound_excludes_the_null(rng, alternative, side):
    alpha = 0.05
    kwargs = {"treatment_probability": 0.5, "planned_devices": 400}
    for delta in (-3.0, -1.0, 0.0, 1.0, 3.0):
        values, treated = stream(rng, 400, 0.5, delta=delta, sd=10.0)
        for devices in (60, 150, 400):
            v, z = values[:devices], treated[:devices]
            path = confidence_sequence_path(v, z, alpha=alpha, **kwargs)
            excluded = np.any(path.upper < 0) if side == "upper" else np.any(path.lower > 0)
            p = always_valid_p_value(v, z, alternative=alternative, alpha=alpha, **kwargs)
            assert (p <= alpha) == bool(excluded), (delta, devices, p)


def test_the_two_sided_p_value_is_one_without_evidence_and_tiny_with_a_large_effect(rng):
    kwargs = {"treatment_probability": 0.5, "planned_devices": 400}
    values, treated = stream(rng, 400, 0.5, delta=0.0)
    assert always_valid_p_value(values[:45], treated[:45], **kwargs) == pytest.approx(1.0)
    values, treated = stream(rng, 400, 0.5, delta=10.0)
    assert always_valid_p_value(values, treated, **kwargs) < 1e-6


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"treatment_probability": 1.0}, "treatment_probability"),
        ({"planned_devices": 1}, "planned_devices"),
        ({"min_devices_per_arm": 1}, "min_devices_per_arm"),
        ({"alpha": 0.6}, "alpha"),
    ],
)
def test_arguments_that_cannot_describe_a_stage_are_refused(rng, change, match):
    values, treated = stream(rng, 50, 0.5, delta=0.0)
    kwargs = {"treatment_probability": 0.5, "planned_devices": 50} | change
    with pytest.raises(ValueError, match=match):
        confidence_sequence(values, treated, **kwargs)


def test_values_and_assignments_must_line_up_and_be_finite():
    with pytest.raises(ValueError, match="shape"):
        difference_stream([1.0, 2.0, 3.0], [1, 0], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        difference_stream([1.0, math.nan, 3.0], [1, 0, 1], 0.5)
    with pytest.raises(ValueError, match="0/1"):
        difference_stream([1.0, 2.0, 3.0], [1, 0, 2], 0.5)
