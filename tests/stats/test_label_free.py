"""Label-free performance: CBPE accuracy from calibrated confidence, and the prediction-mix shift test."""

import numpy as np
import pytest
from scipy import stats

from modelfleet.stats import calibration_map, estimated_accuracy, prediction_mix_shift

BINS = 20
EDGES = np.linspace(0.0, 1.0, BINS + 1)
FLEETS = 1000


def histogram(confidence, weights=None):
    index = np.minimum((confidence * BINS).astype(int), BINS - 1)
    return np.bincount(index, weights=weights, minlength=BINS)


def top1_confidence(rng, a, size):
    """Top-1 confidence of a 10-class model: in [0.1, 1], skewed high for a > 1.5."""
    return 0.1 + 0.9 * rng.beta(a, 1.5, size=size)


def simulated_fleet(rng, shift):
    """One fleet of a calibrated model: validation map, live histogram of 50 devices, realised accuracy."""
    validation = top1_confidence(rng, 5.0, 5000)
    correct = rng.random(validation.size) < validation  # calibrated: P(correct | c) = c
    cmap = calibration_map(EDGES, histogram(validation), histogram(validation, correct.astype(float)))
    per_device = rng.poisson(200, 50) + 1
    # Covariate shift: each device's inputs are harder by a device-level amount; the model stays calibrated.
    a = 5.0 * np.exp(-shift + 0.3 * rng.standard_normal(per_device.size))
    live = top1_confidence(rng, np.repeat(a, per_device), per_device.sum())
    live_correct = rng.random(live.size) < live
    return estimated_accuracy(histogram(live), cmap), live_correct.mean(), correct.mean()


@pytest.mark.parametrize(("shift", "max_mae"), [(0.0, 0.01), (1.0, 0.02)])
def test_cbpe_tracks_true_accuracy_of_a_calibrated_model_within_its_stated_error(rng, shift, max_mae):
    results = [simulated_fleet(rng, shift) for _ in range(FLEETS)]
    errors = np.array([est.estimate - true for est, true, _ in results])
    covered = sum(est.interval(0.95)[0] <= true <= est.interval(0.95)[1] for est, true, _ in results)
    validation_mae = np.mean([abs(val - true) for _, true, val in results])
    mae = np.abs(errors).mean()
    report = (
        f"shift={shift}: 95% interval covers {covered / FLEETS:.3f} of fleets, MAE {mae:.4f} "
        f"(validation accuracy as a guess: MAE {validation_mae:.4f})"
    )
    # A 95% interval covers 95% of fleets on average; require that coverage is not credibly below it.
    assert covered >= stats.binom.ppf(0.001, FLEETS, 0.95), report
    assert mae < max_mae, report
    if shift:
        assert mae < validation_mae / 5, report


def test_the_calibration_map_falls_back_to_the_midpoint_and_shrinks_thin_bins():
    edges = [0.0, 0.5, 0.8, 1.0]
    cmap = calibration_map(edges, [0, 3, 1000], [0, 3, 900], prior_strength=1.0)
    assert cmap.accuracy[0] == pytest.approx(0.25)  # no validation data: the midpoint
    assert cmap.accuracy[1] == pytest.approx((3 + 0.65) / 4)  # 3 of 3 correct is not "accuracy 1"
    assert cmap.accuracy[2] == pytest.approx((900 + 0.9) / 1001)
    assert cmap.variance[1] > cmap.variance[2] > 0


def test_the_estimate_is_the_count_weighted_map_and_its_error_shrinks_with_data():
    cmap = calibration_map([0.0, 0.5, 1.0], [10_000, 10_000], [3_000, 9_000])
    small = estimated_accuracy([10, 30], cmap)
    large = estimated_accuracy([1_000, 3_000], cmap)
    expected = (10 * cmap.accuracy[0] + 30 * cmap.accuracy[1]) / 40
    assert small.estimate == pytest.approx(expected)
    assert large.estimate == pytest.approx(expected)
    assert large.standard_error < small.standard_error / 5
    assert small.predictions == 40


def test_a_live_histogram_on_other_bins_or_empty_is_refused():
    cmap = calibration_map([0.0, 0.5, 1.0], [10, 10], [5, 8])
    with pytest.raises(ValueError, match="shape"):
        estimated_accuracy([1, 2, 3], cmap)
    with pytest.raises(ValueError, match="empty"):
        estimated_accuracy([0, 0], cmap)
    with pytest.raises(ValueError, match="correct"):
        calibration_map([0.0, 0.5, 1.0], [10, 10], [11, 8])


REFERENCE_MIX = np.array([0.5, 0.3, 0.15, 0.05])


def test_the_prediction_mix_test_is_pearson_homogeneity_for_one_histogram():
    live, reference = np.array([60, 20, 15, 5]), np.array([500, 300, 150, 50])
    result = prediction_mix_shift(live, reference)
    chi2, p, dof, _ = stats.chi2_contingency(np.stack([live, reference]), correction=False)
    assert (result.statistic, result.p_value, result.dof, result.design_effect) == pytest.approx((chi2, p, dof, 1.0))


def test_classes_never_predicted_on_either_side_do_not_count():
    result = prediction_mix_shift([60, 20, 0, 20], [500, 300, 0, 200])
    assert result.dof == 2


def test_the_same_mix_is_not_a_shift_and_a_new_favourite_class_is():
    reference = (REFERENCE_MIX * 10_000).astype(int)
    assert prediction_mix_shift(reference // 10, reference).p_value == pytest.approx(1.0)
    assert prediction_mix_shift([200, 300, 400, 100], reference).p_value < 1e-12


def test_per_device_counts_correct_for_clustering_where_pooled_counts_over_reject(rng, upper_bound):
    # No fleet-level shift, but each device sees its own class mix (Dirichlet around the reference mix).
    fleets, devices, alpha = 500, 30, 0.05
    reference = rng.multinomial(20_000, REFERENCE_MIX)
    naive = corrected = 0
    for _ in range(fleets):
        mixes = rng.dirichlet(20 * REFERENCE_MIX, size=devices)
        counts = np.stack([rng.multinomial(300, mix) for mix in mixes])
        naive += prediction_mix_shift(counts.sum(axis=0), reference).p_value < alpha
        corrected += prediction_mix_shift(counts, reference).p_value < alpha
    assert naive / fleets > 0.5, naive / fleets
    assert corrected / fleets <= upper_bound(fleets, alpha), corrected / fleets
