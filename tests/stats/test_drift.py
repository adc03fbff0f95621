"""Drift distances on fixed-edge histograms, the K-window persistence rule and fleet shares."""

import math

import numpy as np
import pytest
from scipy.spatial import distance

from modelfleet.stats import (
    DriftShare,
    binned_ks_distance,
    drift_share_by_group,
    jensen_shannon_distance,
    kl_divergence,
    persistent_drift,
    population_stability_index,
)

REFERENCE = np.array([25, 25, 50])  # proportions 0.25, 0.25, 0.5
LIVE = np.array([40, 30, 30])  # proportions 0.4, 0.3, 0.3
DISTANCES = [population_stability_index, kl_divergence, jensen_shannon_distance, binned_ks_distance]


def test_psi_by_hand():
    by_hand = 0.15 * math.log(1.6) + 0.05 * math.log(1.2) + (-0.2) * math.log(0.6)
    assert float(population_stability_index(REFERENCE, LIVE, epsilon=0.0)) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.18178, abs=1e-5)
    # the default smoothing barely moves a histogram without empty bins
    assert float(population_stability_index(REFERENCE, LIVE)) == pytest.approx(by_hand, abs=1e-3)


def test_kl_is_live_relative_to_reference_by_hand():
    by_hand = 0.4 * math.log(1.6) + 0.3 * math.log(1.2) + 0.3 * math.log(0.6)
    assert float(kl_divergence(REFERENCE, LIVE, epsilon=0.0)) == pytest.approx(by_hand)


def test_jensen_shannon_matches_scipy_in_bits():
    expected = distance.jensenshannon(REFERENCE / 100, LIVE / 100, base=2)
    assert float(jensen_shannon_distance(REFERENCE, LIVE)) == pytest.approx(expected)


def test_binned_ks_is_the_largest_cdf_gap_over_the_edges():
    # CDFs: reference 0.25, 0.5, 1.0; live 0.4, 0.7, 1.0
    assert float(binned_ks_distance(REFERENCE, LIVE)) == pytest.approx(0.2)


@pytest.mark.parametrize("score", DISTANCES)
def test_identical_histograms_score_zero_whatever_their_totals(score):
    assert float(score(REFERENCE, 7 * REFERENCE)) == pytest.approx(0.0, abs=1e-12)


def test_disjoint_histograms_score_the_maximum():
    ref, live = [10, 0], [0, 10]
    assert float(jensen_shannon_distance(ref, live)) == pytest.approx(1.0)
    assert float(binned_ks_distance(ref, live)) == pytest.approx(1.0)
    eps = 1e-4
    smoothed_psi = 2 / (1 + 2 * eps) * math.log((1 + eps) / eps)
    assert float(population_stability_index(ref, live, epsilon=eps)) == pytest.approx(smoothed_psi)
    assert math.isinf(float(population_stability_index(ref, live, epsilon=0.0)))


def test_jensen_shannon_stays_in_zero_one(rng):
    ref = rng.integers(0, 50, size=(1000, 12))
    live = rng.integers(0, 50, size=(1000, 12)) * (rng.random((1000, 12)) < 0.3)
    js = jensen_shannon_distance(ref, live)
    finite = js[np.isfinite(js)]
    assert finite.size > 900
    assert np.all((finite >= 0) & (finite <= 1))


@pytest.mark.parametrize("score", DISTANCES)
def test_many_devices_are_scored_at_once_against_one_reference(rng, score):
    live = rng.integers(0, 100, size=(64, 3))
    scores = score(REFERENCE, live)
    assert scores.shape == (64,)
    np.testing.assert_allclose(scores, [float(score(REFERENCE, row)) for row in live])


@pytest.mark.parametrize("score", DISTANCES)
def test_a_device_with_no_data_scores_nan(score):
    assert np.isnan(score(REFERENCE, np.zeros((2, 3)))).all()


def test_histograms_on_different_bins_are_refused():
    with pytest.raises(ValueError, match="bins"):
        population_stability_index([1, 2, 3], [1, 2])


THRESHOLD, K = 0.2, 3
PERSISTENCE = {
    "noisy single spikes never count": (
        [0.5, 0.1, 0.5, 0.1, 0.5, 0.1],
        [False] * 6,
    ),
    "K in a row count, then stop when the score drops": (
        [0.1, 0.3, 0.3, 0.3, 0.1, 0.1],
        [False, False, False, True, False, False],
    ),
    "drifting now after K in a row": (
        [0.1, 0.1, 0.1, 0.3, 0.3, 0.4],
        [False, False, False, False, False, True],
    ),
    "a window without data breaks the run": (
        [0.3, 0.3, math.nan, 0.3, 0.3, 0.3],
        [False, False, False, False, False, True],
    ),
    "at the threshold is not above it": (
        [0.2] * 6,
        [False] * 6,
    ),
    "a long run keeps counting": (
        [0.9] * 6,
        [False, False, True, True, True, True],
    ),
}


def test_the_persistence_rule_table_vectorized_over_devices():
    scores = np.array([row for row, _ in PERSISTENCE.values()])
    expected = np.array([flags for _, flags in PERSISTENCE.values()])
    result = persistent_drift(scores, THRESHOLD, K)
    for name, got, want in zip(PERSISTENCE, result, expected, strict=True):
        assert got.tolist() == want.tolist(), name


def test_one_window_persistence_is_the_plain_threshold():
    scores = np.array([[0.1, 0.3, 0.1]])
    assert persistent_drift(scores, 0.2, 1).tolist() == [[False, True, False]]


def test_the_fleet_share_of_drifting_devices_per_group():
    shares = drift_share_by_group([True, False, False, True, True], ["pi4", "jetson", "pi4", "gateway", "pi4"])
    assert shares == (
        DriftShare(group="gateway", devices=1, drifting=1, share=1.0),
        DriftShare(group="jetson", devices=1, drifting=0, share=0.0),
        DriftShare(group="pi4", devices=3, drifting=2, share=pytest.approx(2 / 3)),
    )
