"""Device-level comparisons against hand computations, and why inferences must not be pooled."""

import math

import numpy as np
import pytest

from modelfleet.stats import (
    cluster_robust_difference,
    difference_in_means,
    difference_in_proportions,
    ratio_of_means,
)

TREATMENT = [4.0, 6.0, 8.0]  # mean 6, sample variance 4
CONTROL = [1.0, 3.0, 5.0, 7.0]  # mean 4, sample variance 20/3


def test_difference_in_means_is_welch_by_hand():
    est = difference_in_means(TREATMENT, CONTROL)
    assert est.estimate == pytest.approx(2.0)
    assert est.standard_error == pytest.approx(math.sqrt(4 / 3 + (20 / 3) / 4))
    assert (est.n_treatment, est.n_control) == (3, 4)


def test_the_interval_is_estimate_plus_minus_z_standard_errors():
    est = difference_in_means(TREATMENT, CONTROL)
    lo, hi = est.interval(0.95)
    assert (hi - lo) / 2 == pytest.approx(1.959964 * est.standard_error, rel=1e-6)


def test_weighted_proportions_are_pooled_rates_with_a_cluster_robust_error():
    # (errors, inferences) per device
    t_err, t_n = np.array([1, 0, 6]), np.array([10, 20, 30])
    c_err, c_n = np.array([2, 2]), np.array([40, 10])
    est = difference_in_proportions(t_err / t_n, c_err / c_n, treatment_weights=t_n, control_weights=c_n)
    assert est.estimate == pytest.approx(7 / 60 - 4 / 50)
    # CR1 by hand for the treatment arm: n/(n-1) * sum (e_i - r n_i)^2 / N^2
    r = 7 / 60
    by_hand = 3 / 2 * sum((e - r * n) ** 2 for e, n in zip(t_err, t_n, strict=True)) / 60**2
    rc = 4 / 50
    by_hand += 2 / 1 * sum((e - rc * n) ** 2 for e, n in zip(c_err, c_n, strict=True)) / 50**2
    assert est.standard_error == pytest.approx(math.sqrt(by_hand))


def test_the_sum_count_form_equals_the_weighted_form_and_drops_silent_devices():
    t_sum, t_n = np.array([1.0, 0.0, 6.0, 0.0]), np.array([10, 20, 30, 0])
    c_sum, c_n = np.array([2.0, 2.0]), np.array([40, 10])
    a = cluster_robust_difference(t_sum, t_n, c_sum, c_n)
    b = difference_in_proportions(t_sum[:3] / t_n[:3], c_sum / c_n, treatment_weights=t_n[:3], control_weights=c_n)
    assert a == b


def test_the_ratio_of_means_uses_the_delta_method_on_the_log_scale():
    est = ratio_of_means(TREATMENT, CONTROL)
    assert est.ratio == pytest.approx(1.5)
    assert est.log_ratio == pytest.approx(math.log(1.5))
    assert est.log_standard_error == pytest.approx(math.sqrt((4 / 3) / 36 + (20 / 12) / 16))
    lo, hi = est.interval()
    assert lo < 1.5 < hi
    assert lo * hi == pytest.approx(1.5**2)


def test_proportions_outside_zero_one_and_lonely_arms_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        difference_in_proportions([0.1, 1.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="two devices"):
        difference_in_means([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive means"):
        ratio_of_means([-1.0, -2.0], [1.0, 2.0])


def test_device_level_errors_cover_where_pooled_inference_errors_do_not(rng):
    # 40 devices per arm, 200 inferences each, device error rates vary (logit sd 1): no true difference.
    fleets, devices, inferences = 2000, 40, 200
    logits = math.log(0.05 / 0.95) + rng.standard_normal((fleets, 2, devices))
    errors = rng.binomial(inferences, 1 / (1 + np.exp(-logits)))
    rates = errors / inferences
    device_cover = pooled_cover = 0
    for f in range(fleets):
        est = difference_in_proportions(rates[f, 0], rates[f, 1])
        device_cover += abs(est.estimate) <= 1.96 * est.standard_error
        p = errors[f].sum(axis=1) / (devices * inferences)
        naive_se = math.sqrt(sum(q * (1 - q) / (devices * inferences) for q in p))
        pooled_cover += abs(p[0] - p[1]) <= 1.96 * naive_se
    assert device_cover / fleets >= 0.93, device_cover / fleets
    assert pooled_cover / fleets < 0.75, pooled_cover / fleets
