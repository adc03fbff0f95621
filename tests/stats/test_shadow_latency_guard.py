"""The shadow latency guard's margin: a candidate slower only by how it is scored passes, a slow one fails.

The agent scores the shadow candidate after the active model, in a background
thread, with colder caches, so a candidate of the active model's own size
measures 10-25 % slower. The simulations read every run after every device
(the guard's own path and the family's verdict rule) on a fleet whose devices
differ tenfold in speed (a Pi beside a Jetson), with a per-device spread of the
measured slowdown in three shapes: normal, heavy-tailed (t with 3 degrees of
freedom) and right-skewed (hiccups that slow the candidate on a few devices).
False failures are checked with the 95 % Clopper-Pearson interval: its upper
bound must stay under the bound the design claims.
"""

import math

import numpy as np
import pytest

from modelfleet.stats import (
    DEFAULT_MIN_DEVICES_PER_ARM,
    DEFAULT_SHADOW_LATENCY_MARGIN,
    SHADOW_LATENCY,
    ShadowLabels,
    adjust_p_values,
    analyze_shadow,
    clopper_pearson,
)
from modelfleet.stats._experiments import LOSER, side_alpha, verdict_codes
from modelfleet.stats._shadow import latency_guard_path
from modelfleet.stats._streams import paired_path

pytestmark = pytest.mark.slow

ALPHA = 0.05
MARGIN = DEFAULT_SHADOW_LATENCY_MARGIN


def spread(rng, shape, kind):
    """Standardized per-device noise (mean 0, sd 1) of the given shape."""
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "heavy":
        return rng.standard_t(3, shape) / math.sqrt(3.0)
    if kind == "right-skewed":
        return rng.exponential(1.0, shape) - 1.0
    if kind == "left-skewed":
        return 1.0 - rng.exponential(1.0, shape)
    raise ValueError(kind)


def fleet(rng, runs, devices, *, slowdown, kind="normal", sd=0.3):
    """Per-device mean latencies (ms) of both models; the candidate's geometric-mean ratio is 1 + slowdown."""
    shape = (runs, devices)
    level = 0.2 * np.exp(0.7 * rng.standard_normal(shape))  # devices differ tenfold in speed
    active = level * np.exp(0.05 * rng.standard_normal(shape))
    candidate = level * (1.0 + slowdown) * np.exp(sd * spread(rng, shape, kind))
    return active, candidate


def guard_failures(rng, runs, devices, *, slowdown, margin=MARGIN, kind="normal", sd=0.3, labels=False):
    """Return, per run, the first device count at which the guard failed (-1: never), read after every device.

    With ``labels`` the family also holds a primary accuracy comparison whose candidate is clearly better, so
    Holm soon hands the guard the whole alpha: the least favourable family for the guard.
    """
    active, candidate = fleet(rng, runs, devices, slowdown=slowdown, kind=kind, sd=sd)
    a_side = side_alpha(ALPHA, 2 if labels else 1)
    common = {"planned_devices": devices, "alpha_side": a_side, "min_devices": DEFAULT_MIN_DEVICES_PER_ARM}
    latency = latency_guard_path(active, candidate, margin=margin, **common)
    p_values, oriented = [latency.p_value()], [latency.sign() * SHADOW_LATENCY.sign()]
    if labels:
        accuracy = paired_path(0.05 + 0.02 * rng.standard_normal(active.shape), np.full(active.shape, 0.8), **common)
        p_values.insert(0, accuracy.p_value())
        oriented.insert(0, accuracy.sign())
    codes = verdict_codes(
        adjust_p_values(np.stack(p_values, axis=-1), "holm"),
        np.stack(oriented, axis=-1),
        variant_of=np.zeros(len(p_values), dtype=np.int64),
        primary=np.arange(len(p_values)) < len(p_values) - 1,  # accuracy first when labelled
        variants=1,
        alpha=ALPHA,
    )
    worse = codes[..., 0] == LOSER  # the accuracy lift is clearly positive, so a loser lost on latency
    return np.where(worse.any(axis=-1), np.argmax(worse, axis=-1) + 1, -1)


# slowdown (true geometric-mean ratio - 1), shape of the per-device spread, labelled family
WITHIN_THE_MARGIN = [
    (0.15, "normal", False),
    (0.15, "left-skewed", False),
    (MARGIN, "normal", False),
    (MARGIN, "heavy", False),
    (MARGIN, "right-skewed", False),
    (MARGIN, "normal", True),
]


@pytest.mark.parametrize(("slowdown", "kind", "labels"), WITHIN_THE_MARGIN)
def test_a_candidate_slower_only_within_the_margin_fails_the_guard_at_most_half_alpha_of_the_time(
    rng, slowdown, kind, labels
):
    runs = 4000
    failed = guard_failures(rng, runs, 400, slowdown=slowdown, kind=kind, labels=labels) > 0
    assert clopper_pearson(int(failed.sum()), runs)[1] <= ALPHA / 2


def test_at_zero_margin_the_scoring_bias_alone_fails_nearly_every_candidate(rng):
    failed = guard_failures(rng, 1000, 400, slowdown=0.15, margin=0.0) > 0
    assert failed.mean() >= 0.99


@pytest.mark.parametrize(("slowdown", "by_devices", "power"), [(1.0, 30, 0.99), (0.5, 100, 0.95)])
def test_a_candidate_clearly_beyond_the_margin_fails_the_guard_early(rng, slowdown, by_devices, power):
    first = guard_failures(rng, 2000, 400, slowdown=slowdown)
    assert np.mean((first > 0) & (first <= by_devices)) >= power


def shadow_fleet(rng, devices, *, slowdown, accuracy_gain=0.03, labelled=200):
    """One fleet's shadow aggregates with labels: the candidate is more accurate and measures slower."""
    n = np.full(devices, labelled)
    active_correct = rng.binomial(n, 0.8)
    flips = rng.binomial(n, 0.1)
    only_candidate = rng.binomial(flips, 0.5 + accuracy_gain * 5)
    active, candidate = fleet(rng, 1, devices, slowdown=slowdown, sd=0.1)
    aggregates = {
        "n_compared": n,
        "n_agree": n - flips,
        "active_confidence": np.full(devices, 0.8),
        "candidate_confidence": np.full(devices, 0.8),
        "active_latency_ms": active[0],
        "candidate_latency_ms": candidate[0],
        "planned_devices": devices,
    }
    labels = ShadowLabels(n, active_correct, np.minimum(flips - only_candidate, active_correct), only_candidate)
    return aggregates, labels


def test_a_more_accurate_candidate_measured_15_percent_slower_wins_under_the_default_margin(rng):
    aggregates, labels = shadow_fleet(rng, 200, slowdown=0.15)
    result = analyze_shadow(**aggregates, labels=labels)
    assert result.analysis.verdict == "winner"
    assert "no guard metric is worse" in result.analysis.reason
    latency = result.analysis.lifts[1]
    assert (latency.metric, latency.margin, result.latency_margin) == ("latency_ms", MARGIN, MARGIN)
    assert not latency.worse
    assert latency.better, "non-inferiority within the margin is shown"
    assert latency.relative_lower < 0.15 < latency.relative_upper < MARGIN


def test_the_same_candidate_is_a_loser_on_latency_at_zero_margin(rng):
    aggregates, labels = shadow_fleet(rng, 200, slowdown=0.15)
    result = analyze_shadow(**aggregates, labels=labels, latency_margin=0.0)
    assert result.analysis.verdict == "loser"
    assert result.analysis.lifts[1].worse


def test_a_candidate_twice_as_slow_loses_and_the_reason_names_the_margin(rng):
    aggregates, labels = shadow_fleet(rng, 200, slowdown=1.0)
    result = analyze_shadow(**aggregates, labels=labels)
    assert result.analysis.verdict == "loser"
    assert result.analysis.lifts[1].worse
    assert result.analysis.lifts[1].relative_lower > MARGIN
    assert "latency_ms" in result.analysis.reason
    assert "margin +25%" in result.analysis.reason


def test_the_latency_lift_reads_the_geometric_mean_ratio_and_its_bounds(rng):
    aggregates, _ = shadow_fleet(rng, 200, slowdown=0.15)
    active, candidate = aggregates["active_latency_ms"], aggregates["candidate_latency_ms"]
    result = analyze_shadow(**aggregates, latency_margin=0.4)
    (latency,) = result.analysis.lifts
    ratio = np.exp(np.mean(np.log(candidate / active)))
    assert latency.relative == pytest.approx(ratio - 1.0)
    assert latency.control_mean == pytest.approx(active.mean())
    assert latency.estimate == pytest.approx((ratio - 1.0) * active.mean())
    assert latency.lower == pytest.approx(latency.relative_lower * active.mean())
    assert latency.relative_lower < latency.relative < latency.relative_upper
    assert latency.margin == 0.4
    shifted = analyze_shadow(**aggregates, latency_margin=0.0).analysis.lifts[0]
    assert (shifted.relative_lower, shifted.relative_upper) == pytest.approx(
        (latency.relative_lower, latency.relative_upper)
    ), "the margin moves the test, not the interval"


@pytest.mark.parametrize("margin", [-0.1, math.inf, math.nan])
def test_a_margin_that_is_not_a_finite_non_negative_share_is_refused(rng, margin):
    aggregates, _ = shadow_fleet(rng, 30, slowdown=0.0)
    with pytest.raises(ValueError, match="latency_margin"):
        analyze_shadow(**aggregates, latency_margin=margin)


def test_a_latency_that_is_not_positive_is_refused(rng):
    aggregates, _ = shadow_fleet(rng, 30, slowdown=0.0)
    aggregates["candidate_latency_ms"][3] = 0.0
    with pytest.raises(ValueError, match="positive"):
        analyze_shadow(**aggregates)
