"""Sample-ratio mismatch: the χ² check at p < 0.001 and its anytime-valid counterpart."""

import numpy as np
import pytest

from modelfleet.stats import sample_ratio_mismatch, sequential_sample_ratio_p_value
from modelfleet.stats._srm import _log_bayes_factor


def test_a_52_48_split_of_20000_devices_planned_50_50_is_flagged():
    check = sample_ratio_mismatch([10_400, 9_600], [0.5, 0.5])
    assert check.statistic == pytest.approx(32.0)
    assert check.p_value < 1e-6
    assert check.mismatch


def test_a_50_3_49_7_split_of_2000_devices_is_not_flagged():
    check = sample_ratio_mismatch([1_006, 994], [0.5, 0.5])
    assert check.statistic == pytest.approx(0.072)
    assert check.p_value > 0.5
    assert not check.mismatch


def test_planned_shares_need_not_sum_to_one_and_several_arms_work():
    check = sample_ratio_mismatch([900, 100, 0], [9, 1, 0.001])
    assert check.expected[0] == pytest.approx(899.9, abs=0.1)
    assert not check.mismatch


def test_the_sequential_p_value_flags_a_gross_mismatch_and_not_the_planned_split():
    assert sequential_sample_ratio_p_value([10_400, 9_600], [0.5, 0.5]) < 0.001
    assert sequential_sample_ratio_p_value([1_006, 994], [0.5, 0.5]) == pytest.approx(1.0)


def test_the_sequential_p_value_stays_valid_when_checked_after_every_device(rng, upper_bound):
    runs, devices, alpha = 1000, 2000, 0.05
    holdout = np.cumsum(rng.random((runs, devices)) < 0.1, axis=1)  # planned 10% holdout, respected
    counts = np.stack([np.arange(1, devices + 1) - holdout, holdout], axis=-1)
    log_bf = _log_bayes_factor(counts, [0.9, 0.1], concentration=100.0)
    flagged = np.mean(np.any(log_bf >= np.log(1 / alpha), axis=1))
    assert flagged <= upper_bound(runs, alpha), flagged
    last = counts[0, -1]
    assert sequential_sample_ratio_p_value(last, [0.9, 0.1]) == pytest.approx(min(1.0, np.exp(-log_bf[0, -1])))


def test_counts_and_shares_must_describe_the_same_arms():
    with pytest.raises(ValueError, match="equal length"):
        sample_ratio_mismatch([1, 2, 3], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive"):
        sample_ratio_mismatch([1, 2], [1.0, 0.0])
