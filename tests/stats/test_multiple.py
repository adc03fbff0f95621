"""Holm and Benjamini-Hochberg against hand-computed examples and SciPy; alpha-splitting for gates."""

import numpy as np
import pytest
from scipy import stats

from modelfleet.stats import benjamini_hochberg, holm, split_alpha

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    result = holm(P, alpha=0.05)
    np.testing.assert_allclose(result.adjusted, [0.03, 0.06, 0.06, 0.02])
    assert result.reject.tolist() == [True, False, False, True]


def test_benjamini_hochberg_by_hand():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> x4/1, x4/2, x4/3, x4/4 = 0.02, 0.02, 0.04, 0.04 -> running min from the top.
    result = benjamini_hochberg(P, alpha=0.05)
    np.testing.assert_allclose(result.adjusted, [0.02, 0.04, 0.04, 0.02])
    assert result.reject.all()


def test_benjamini_hochberg_matches_scipy(rng):
    for size in (1, 2, 7, 50):
        p = rng.random(size) ** 3
        np.testing.assert_allclose(benjamini_hochberg(p).adjusted, stats.false_discovery_control(p, method="bh"))


def test_adjusted_values_are_capped_at_one_and_ties_are_kept():
    np.testing.assert_allclose(holm([0.5, 0.5, 0.9]).adjusted, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(benjamini_hochberg([0.02, 0.02]).adjusted, [0.02, 0.02])


def test_split_alpha_for_confidence_sequences():
    assert split_alpha(0.01, 4) == pytest.approx(0.0025)
    assert split_alpha(0.01, 4, method="holm") == pytest.approx(0.0025)
    assert split_alpha(0.01, 4, rejected=2, method="holm") == pytest.approx(0.005)


@pytest.mark.parametrize("bad", [[0.1, 1.2], [[0.1, 0.2]], [-0.1]])
def test_p_values_outside_zero_one_or_not_flat_are_refused(bad):
    with pytest.raises(ValueError, match="p_values"):
        holm(bad)


def test_a_split_over_no_gates_is_refused():
    with pytest.raises(ValueError, match="gates"):
        split_alpha(0.01, 0)
    with pytest.raises(ValueError, match="gates"):
        split_alpha(0.01, 2, rejected=2, method="holm")
