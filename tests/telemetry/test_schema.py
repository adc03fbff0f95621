"""A summary carries counts only, and refuses numbers that cannot be true."""

import itertools
import math
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelfleet.telemetry import LATENCY_EDGES_MS, Event, ShadowStats, Summary, latency_bin_edges

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LATENCY_BINS = len(LATENCY_EDGES_MS) - 1


def summary(**changes):
    fields = {
        "id": "s-0001-device-a",
        "model": "digits",
        "version": "1.1.0",
        "window_start": START,
        "window_seconds": 300,
        "n": 10,
        "latency_counts": (0,) * 20 + (10,) + (0,) * (LATENCY_BINS - 21),
        "latency_sum_ms": 12.5,
        "confidence_counts": (0, 0, 4, 6),
        "confidence_sum": 8.1,
        "confidence_sum_sq": 6.7,
        "predicted_counts": (3, 7),
        "feature_counts": ((5, 5), (2, 8)),
    }
    fields.update(changes)
    return Summary(**fields)


def test_latency_edges_are_log_spaced_with_open_ends():
    edges = latency_bin_edges()
    assert edges[0] == 0.0
    assert math.isinf(edges[-1])
    assert edges[1] == pytest.approx(0.01)
    assert edges[-2] == pytest.approx(100_000.0)
    ratios = {round(b / a, 9) for a, b in itertools.pairwise(edges[1:-1])}
    assert ratios == {round(10 ** (1 / 8), 9)}


def test_a_consistent_summary_round_trips_through_json():
    original = summary()
    assert Summary.model_validate_json(original.model_dump_json()) == original
    assert original.mean_confidence == pytest.approx(0.81)


BROKEN = {
    "more predictions than inferences": {"predicted_counts": (6, 7)},
    "more correct than labelled": {"n_labelled": 2, "n_correct": 3},
    "more labelled than inferences": {"n_labelled": 11},
    "errors beyond n": {"errors": 8, "timeouts": 3},
    "wrong number of latency bins": {"latency_counts": (10,)},
    "negative count": {"errors": -1},
    "naive window start": {"window_start": datetime(2026, 11, 23, 12, 0)},  # noqa: DTZ001
    "infinite sum": {"confidence_sum": math.inf},
    "not a semver": {"version": "v1"},
    "model name with spaces": {"model": "my model"},
    "id too short": {"id": "abc"},
    "unknown field": {"raw_inputs": [1, 2, 3]},
}


@pytest.mark.parametrize("changes", BROKEN.values(), ids=BROKEN.keys())
def test_impossible_or_unexpected_numbers_are_refused(changes):
    with pytest.raises(ValidationError):
        summary(**changes)


def test_shadow_agreement_cannot_exceed_comparisons():
    with pytest.raises(ValidationError, match="n_agree"):
        ShadowStats(active_version="1.0.0", n_compared=3, n_agree=4, active_confidence_sum=1.0)


def test_event_detail_is_flat_and_bounded():
    event = Event(id="e-0001-device-a", kind="health_failed", at=START, reason="golden vector 3 off by 0.2")
    assert event.detail == {}
    with pytest.raises(ValidationError):
        Event(id="e-0001-device-a", kind="health_failed", at=START, detail={f"k{i}": i for i in range(65)})
    with pytest.raises(ValidationError):
        Event(id="e-0001-device-a", kind="exploded", at=START)
