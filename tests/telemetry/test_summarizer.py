"""The summarizer counts exactly what it saw, on the bundle's bins, into aligned windows with stable ids."""

import bisect
import math
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.bundle import BuildOptions, SigningKey, ValidationSet, build_bundle
from modelfleet.clock import ManualClock, SystemClock
from modelfleet.sim import tiny_cnn
from modelfleet.telemetry import (
    LATENCY_EDGES_MS,
    MAX_BINS,
    ShadowComparison,
    Summarizer,
    SummaryLayout,
    feature_values,
)

INF = float("inf")
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a multiple of 300 s since the epoch
LAYOUT = SummaryLayout(
    feature_edges=(
        (-INF, 0.0, 1.0, INF),  # the builder's shape: open outer bins
        (-INF, 10.0, INF),
        (0.0, 0.5, 1.0),  # finite outer edges: values outside count in the outer bins
    ),
    confidence_edges=(0.0, 0.25, 0.5, 0.75, 1.0),
    n_classes=3,
    input_features=(("a", 2), ("b", 1)),
)
ID = re.compile(r"^[0-9a-f]{32}$")


def make(clock=None, *, role="active", active_version=None, salt=b"fixed salt", window_seconds=300):
    clock = clock or ManualClock(START)
    return Summarizer(LAYOUT, "digits", "1.1.0", role, clock, window_seconds, active_version=active_version, salt=salt)


def rows(n, seed=0):
    """``n`` random answered rows: features, confidence, predicted, labels."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.5, 3.0, (n, 3))
    confidence = rng.uniform(0.0, 1.0, n)
    predicted = rng.integers(0, 3, n)
    labels = np.where(rng.uniform(size=n) < 0.5, rng.integers(0, 3, n), -1)
    return features, confidence, predicted, labels


def only(summaries):
    assert len(summaries) == 1
    return summaries[0]


# ------------------------------------------------------------------ counting


def test_counts_add_up_to_what_was_observed():
    summarizer = make()
    features, confidence, predicted, _ = rows(10)
    summarizer.observe(features[:6], confidence[:6], predicted[:6], 2.0)
    summarizer.observe(features[6:8], None, None, 1000.0, error=True, fallback=True)
    summarizer.observe(features[8:9], None, None, 1000.0, timeout=True, fallback=True)
    summarizer.observe(features[9:], confidence[9:], predicted[9:], 3.0)

    summary = only(summarizer.flush(final=True))

    assert (summary.n, summary.errors, summary.timeouts, summary.fallbacks) == (10, 2, 1, 3)
    assert sum(summary.latency_counts) == 10
    assert all(sum(counts) == 10 for counts in summary.feature_counts)
    assert sum(summary.confidence_counts) == sum(summary.predicted_counts) == 7  # answered rows only
    answered = np.r_[confidence[:6], confidence[9:]]
    assert summary.confidence_sum == pytest.approx(answered.sum())
    assert summary.confidence_sum_sq == pytest.approx((answered**2).sum())
    assert summary.latency_sum_ms == pytest.approx(6 * 2.0 + 3 * 1000.0 + 3.0)
    assert summary.mean_confidence == pytest.approx(answered.mean())


# value per feature -> expected bin per feature
FEATURE_BINS = {
    "below the first interior edges": ((-5.0, 5.0, 0.7), (0, 0, 1)),
    "on an edge counts in the bin it opens": ((0.0, 10.0, 0.5), (1, 1, 1)),
    "beyond a finite last edge": ((1.0, INF, 7.0), (2, 1, 1)),
    "below a finite first edge": ((0.5, -INF, -3.0), (1, 0, 0)),
    "on a finite last edge": ((2.0, 11.0, 1.0), (2, 1, 1)),
    "NaN counts in the first bin": ((np.nan, np.nan, np.nan), (0, 0, 0)),
}


@pytest.mark.parametrize("case", list(FEATURE_BINS))
def test_features_are_counted_in_their_reference_bins(case):
    values, expected = FEATURE_BINS[case]
    summarizer = make()

    summarizer.observe(np.array([values]), np.array([0.5]), np.array([0]), 1.0)

    summary = only(summarizer.flush(final=True))
    for feature, counts in enumerate(summary.feature_counts):
        assert counts.index(1) == expected[feature], f"feature {feature}: {counts}"


CONFIDENCE_BINS = {0.0: 0, 0.1: 0, 0.25: 1, 0.5: 2, 0.74: 2, 0.999: 3, 1.0: 3}


@pytest.mark.parametrize(("confidence", "expected"), CONFIDENCE_BINS.items())
def test_confidence_bins_close_on_the_right_and_include_one(confidence, expected):
    summarizer = make()

    summarizer.observe(np.zeros((1, 3)), np.array([confidence]), np.array([1]), 1.0)

    assert only(summarizer.flush(final=True)).confidence_counts[expected] == 1


LATENCIES_MS = [0.0, 0.009, 0.01, 0.5, 7.3, 99.9, 100.0, 123_456.0]


@pytest.mark.parametrize("latency", LATENCIES_MS)
def test_latency_is_counted_on_the_wire_formats_log_bins(latency):
    summarizer = make()

    summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([1]), latency)

    expected = min(int(np.searchsorted(LATENCY_EDGES_MS, latency, side="right")) - 1, len(LATENCY_EDGES_MS) - 2)
    assert only(summarizer.flush(final=True)).latency_counts[expected] == 1


def test_per_row_latencies_are_counted_row_by_row():
    summarizer = make()
    features, confidence, predicted, _ = rows(len(LATENCIES_MS))

    summarizer.observe(features, confidence, predicted, np.array(LATENCIES_MS))

    summary = only(summarizer.flush(final=True))
    expected = np.bincount(
        np.minimum(np.searchsorted(LATENCY_EDGES_MS, LATENCIES_MS, side="right") - 1, len(LATENCY_EDGES_MS) - 2),
        minlength=len(LATENCY_EDGES_MS) - 1,
    )
    assert summary.latency_counts == tuple(expected.tolist())
    assert summary.latency_sum_ms == pytest.approx(sum(LATENCIES_MS))


def test_a_batch_counts_exactly_like_its_rows_one_by_one():
    features, confidence, predicted, labels = rows(300)
    one_by_one, batched = make(), make()

    for i in range(300):
        one_by_one.observe(
            features[i : i + 1], confidence[i : i + 1], predicted[i : i + 1], 1.5, labels=labels[i : i + 1]
        )
    batched.observe(features, confidence, predicted, 1.5, labels=labels)

    single, batch = only(one_by_one.flush(final=True)), only(batched.flush(final=True))
    assert single.model_dump(exclude={"confidence_sum", "confidence_sum_sq"}) == batch.model_dump(
        exclude={"confidence_sum", "confidence_sum_sq"}
    )
    assert single.confidence_sum == pytest.approx(batch.confidence_sum)
    assert single.confidence_sum_sq == pytest.approx(batch.confidence_sum_sq)


def test_labelled_outcomes_count_known_labels_of_answered_rows():
    summarizer = make()
    predicted = np.array([0, 1, 2, 2, 1])
    labels = np.array([0, 2, 2, -1, -1])  # right, wrong, right, unknown, unknown

    summarizer.observe(np.zeros((5, 3)), np.full(5, 0.9), predicted, 1.0, labels=labels)
    summarizer.observe(np.zeros((1, 3)), None, None, 1.0, error=True, labels=np.array([1]))

    summary = only(summarizer.flush(final=True))
    assert (summary.n_labelled, summary.n_correct) == (3, 2)


# ------------------------------------------------------------------ windows and ids


def test_windows_are_aligned_and_split_at_their_boundaries():
    clock = ManualClock(START + timedelta(seconds=290))
    summarizer = make(clock)
    features, confidence, predicted, _ = rows(3)

    summarizer.observe(features[:2], confidence[:2], predicted[:2], 1.0)
    clock.advance(10)  # exactly the next window's start
    summarizer.observe(features[2:], confidence[2:], predicted[2:], 1.0)

    assert summarizer.flush(START + timedelta(seconds=299)) == []
    first = only(summarizer.flush(START + timedelta(seconds=300)))
    assert (first.window_start, first.window_seconds, first.n) == (START, 300, 2)
    second = only(summarizer.flush(final=True))
    assert (second.window_start, second.n) == (START + timedelta(seconds=300), 1)
    assert summarizer.flush(final=True) == []


def test_windows_align_to_multiples_of_their_length_since_the_epoch():
    clock = ManualClock(START + timedelta(seconds=1234))
    summarizer = make(clock, window_seconds=3600)

    summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)

    window_start = only(summarizer.flush(final=True)).window_start
    assert window_start.timestamp() % 3600 == 0
    assert window_start <= clock.now() < window_start + timedelta(hours=1)


def test_the_system_clock_counts_a_row_in_the_window_of_now():
    before = datetime.now(UTC)
    summarizer = Summarizer(LAYOUT, "digits", "1.1.0", "active", SystemClock(), 300, salt=b"s")

    summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)

    after = datetime.now(UTC)
    start = only(summarizer.flush(final=True)).window_start
    assert start <= after
    assert before < start + timedelta(seconds=300)


def test_ids_are_deterministic_for_a_salt_and_never_repeat():
    def summaries(salt):
        clock = ManualClock(START)
        summarizer = make(clock, salt=salt)
        for _ in range(3):
            summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)
            clock.advance(300)
        summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)
        early = summarizer.flush(final=True)
        summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)  # the same window again
        return early + summarizer.flush(final=True)

    first, again, other = summaries(b"a"), summaries(b"a"), summaries(b"b")

    ids = [summary.id for summary in first]
    assert all(ID.fullmatch(summary_id) for summary_id in ids)
    assert len(set(ids)) == len(ids) == 5
    assert first[-1].window_start == first[-2].window_start
    assert ids == [summary.id for summary in again]
    assert not set(ids) & {summary.id for summary in other}


def test_without_an_injected_salt_two_summarizers_never_share_ids():
    clock = ManualClock(START)
    a, b = make(clock, salt=None), make(clock, salt=None)
    for summarizer in (a, b):
        summarizer.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)

    assert only(a.flush(final=True)).id != only(b.flush(final=True)).id


# ------------------------------------------------------------------ shadow


def test_shadow_agreement_and_who_was_right():
    summarizer = make(role="shadow", active_version="1.0.0")
    candidate = np.array([0, 1, 2, 2, 0, 1])
    active = ShadowComparison(predicted=np.array([0, 1, 1, 2, 1, 1]), confidence=np.full(6, 0.5))
    labels = np.array([0, 2, 2, 1, 1, -1])

    summarizer.observe(np.zeros((6, 3)), np.full(6, 0.8), candidate, 4.0, labels=labels, shadow=active)
    summarizer.observe(np.zeros((1, 3)), None, None, 4.0, error=True)  # nothing to compare

    summary = only(summarizer.flush(final=True))
    assert summary.role == "shadow"
    shadow = summary.shadow
    assert (shadow.active_version, shadow.n_compared, shadow.n_agree) == ("1.0.0", 6, 4)
    assert shadow.active_confidence_sum == pytest.approx(3.0)
    assert (shadow.n_labelled, shadow.active_correct, shadow.candidate_correct) == (5, 2, 2)
    assert (shadow.only_active_correct, shadow.only_candidate_correct) == (1, 1)
    assert summary.confidence_sum == pytest.approx(6 * 0.8)


def test_only_shadow_summaries_carry_shadow_stats():
    active = make()
    active.observe(np.zeros((1, 3)), np.array([0.5]), np.array([0]), 1.0)

    assert only(active.flush(final=True)).shadow is None
    with pytest.raises(ValueError, match="active_version"):
        make(role="shadow")
    with pytest.raises(ValueError, match="active_version"):
        make(role="active", active_version="1.0.0")


# ------------------------------------------------------------------ refusals


def observe_args(**changes):
    args = {
        "features_per_row": np.zeros((2, 3)),
        "confidence": np.array([0.5, 0.6]),
        "predicted": np.array([0, 1]),
        "latency_ms": 1.0,
    }
    args.update(changes)
    return args


REFUSED = {
    "features of another layout": (observe_args(features_per_row=np.zeros((2, 4))), "features must be"),
    "features without rows": (observe_args(features_per_row=np.zeros(3)), "features must be"),
    "confidence above one": (observe_args(confidence=np.array([0.5, 1.5])), "within \\[0, 1\\]"),
    "NaN confidence": (observe_args(confidence=np.array([0.5, np.nan])), "within \\[0, 1\\]"),
    "unknown class": (observe_args(predicted=np.array([0, 3])), "predicted classes"),
    "negative class": (observe_args(predicted=np.array([-1, 0])), "predicted classes"),
    "one confidence short": (observe_args(confidence=np.array([0.5])), "one value per row"),
    "scores of a failed inference": (observe_args(error=True), "neither for failed"),
    "no scores for an answer": (observe_args(confidence=None, predicted=None), "give confidence"),
    "error and timeout": (observe_args(confidence=None, predicted=None, error=True, timeout=True), "not both"),
    "negative latency": (observe_args(latency_ms=-1.0), "latency_ms"),
    "NaN latency": (observe_args(latency_ms=float("nan")), "latency_ms"),
    "latency per row short": (observe_args(latency_ms=np.array([1.0])), "latency_ms"),
    "labels short": (observe_args(labels=np.array([1])), "labels"),
    "shadow on the active role": (
        observe_args(shadow=ShadowComparison(np.array([0, 1]), np.array([0.5, 0.5]))),
        "shadow",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_be_counted_is_refused_and_nothing_is_counted(case):
    args, message = REFUSED[case]
    summarizer = make()

    with pytest.raises(ValueError, match=message):
        summarizer.observe(**args)

    assert summarizer.flush(final=True) == []


BAD_LAYOUTS = {
    "edges not increasing": {"feature_edges": ((0.0, 0.0),)},
    "NaN edge": {"feature_edges": ((0.0, float("nan"), 1.0),)},
    "one edge": {"confidence_edges": (0.0,)},
    "feature count disagrees": {"input_features": (("a", 2),)},
    "no classes": {"n_classes": 0},
}


@pytest.mark.parametrize("case", list(BAD_LAYOUTS))
def test_a_layout_that_cannot_be_counted_on_is_refused(case):
    fields = {
        "feature_edges": ((-INF, INF),),
        "confidence_edges": (0.0, 1.0),
        "n_classes": 2,
        "input_features": (("x", 1),),
    } | BAD_LAYOUTS[case]
    with pytest.raises(ValueError, match=r"edges|features|n_classes"):
        SummaryLayout(**fields)


ROW_REFUSED = {
    "features of another layout": ((np.zeros((1, 4)), 0.5, 0, 1.0), "features must be"),
    "two rows of features": ((np.zeros((2, 3)), 0.5, 0, 1.0), "one value per row"),
    "confidence above one": ((np.zeros((1, 3)), 1.5, 0, 1.0), "within \\[0, 1\\]"),
    "NaN confidence": ((np.zeros((1, 3)), float("nan"), 0, 1.0), "within \\[0, 1\\]"),
    "unknown class": ((np.zeros((1, 3)), 0.5, 3, 1.0), "predicted classes"),
    "negative class": ((np.zeros((1, 3)), 0.5, -1, 1.0), "predicted classes"),
    "negative latency": ((np.zeros((1, 3)), 0.5, 0, -1.0), "latency_ms"),
    "infinite latency": ((np.zeros((1, 3)), 0.5, 0, INF), "latency_ms"),
}


@pytest.mark.parametrize("case", list(ROW_REFUSED))
def test_a_row_in_plain_numbers_is_refused_like_its_arrays_and_nothing_is_counted(case):
    (features, confidence, predicted, latency), message = ROW_REFUSED[case]
    summarizer = make()

    with pytest.raises(ValueError, match=message):
        summarizer.observe_row(features, confidence, predicted, latency)
    with pytest.raises(ValueError, match=message):
        summarizer.observe(features, np.array([confidence]), np.array([predicted]), latency)

    assert summarizer.flush(final=True) == []


# ------------------------------------------------------------------ concurrency and cost


def test_concurrent_observers_lose_no_count():
    summarizer = make()
    features, confidence, predicted, _ = rows(1)

    def observe_many():
        for _ in range(500):
            summarizer.observe(features, confidence, predicted, 1.0)

    threads = [threading.Thread(target=observe_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    summary = only(summarizer.flush(final=True))
    assert summary.n == sum(summary.confidence_counts) == 2000


def test_single_row_observe_cost(capsys):
    """Micro-benchmark, prints only: one row of 64 features (the digits model's input) on a busy machine."""
    rng = np.random.default_rng(0)
    edges = tuple((-INF, *np.sort(rng.standard_normal(9)).tolist(), INF) for _ in range(64))
    layout = SummaryLayout(edges, tuple(i / 20 for i in range(21)), 10, (("X", 64),))
    summarizer = Summarizer(layout, "digits", "1.0.0", "active", ManualClock(START))
    row, confidence, predicted = rng.standard_normal((1, 64)), np.array([0.7]), np.array([3])
    for _ in range(1000):
        summarizer.observe(row, confidence, predicted, 0.4)

    best = min(_time_per_call(summarizer, row, confidence, predicted) for _ in range(5))

    with capsys.disabled():
        print(f"\nsummarizer: {best * 1e6:.1f} us per single-row observe (64 features, best of 5 x 5000)")  # noqa: T201 - the measurement is the output


def _time_per_call(summarizer, row, confidence, predicted, calls=5000):
    start = time.perf_counter()
    for _ in range(calls):
        summarizer.observe(row, confidence, predicted, 0.4)
    return (time.perf_counter() - start) / calls


# ------------------------------------------------------------------ against a real bundle


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("cnn")
    case = tiny_cnn(work / "cnn.onnx", seed=1)
    options = BuildOptions(name="cnn", version="1.0.0", release=1, labels=case.labels)
    manifest = build_bundle(
        case.path, ValidationSet({"x": case.x_val}, None), [SigningKey.generate()], work / "b", options
    )
    return case, manifest


def test_the_validation_set_reproduces_the_bundles_reference_histograms(cnn_bundle):
    case, manifest = cnn_bundle
    references = manifest.evidence.references
    layout = SummaryLayout(
        feature_edges=tuple(feature.edges for feature in references.features),
        confidence_edges=references.confidence.edges,
        n_classes=manifest.contract.head.n_classes,
        input_features=(("x", len(references.features)),),
    )
    session = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    scores = session.run(["probabilities"], {"x": case.x_val})[0].astype(np.float64)
    summarizer = Summarizer(layout, "cnn", "1.0.0", "active", ManualClock(START))

    summarizer.observe(
        feature_values({"x": case.x_val}, layout.input_order),
        np.clip(scores.max(axis=1), 0.0, 1.0),
        scores.argmax(axis=1),
        1.0,
    )

    summary = only(summarizer.flush(final=True))
    assert summary.feature_counts == tuple(feature.counts for feature in references.features)
    assert summary.confidence_counts == references.confidence.counts


# ------------------------------------------------------------------ equivalence with a plain reference


def _reference_bin(edges, value, closed_last=False):
    """The bin a value counts in, the builder's way, one bisect per value (NaN features: the first bin)."""
    if math.isnan(value):
        return 0
    bins = len(edges) - 1
    return min(max(bisect.bisect_right(edges, value) - 1, 0), bins - 1)


class _ReferenceSummarizer:
    """Counts every row of every call at once, in plain Python: what the block-buffered summarizer must equal."""

    def __init__(self, layout, window_seconds):
        self.layout, self.seconds, self.windows = layout, window_seconds, {}

    def window(self, at):
        start = int(at.timestamp() // self.seconds) * self.seconds
        if start not in self.windows:
            self.windows[start] = {
                "n": 0, "errors": 0, "fallbacks": 0, "timeouts": 0, "n_labelled": 0, "n_correct": 0,
                "latency": [0] * (len(LATENCY_EDGES_MS) - 1), "latency_sum": 0.0,
                "confidence": [0] * (len(self.layout.confidence_edges) - 1), "predicted": [0] * self.layout.n_classes,
                "confidence_sum": 0.0, "confidence_sum_sq": 0.0,
                "features": [[0] * (len(edges) - 1) for edges in self.layout.feature_edges],
            }  # fmt: skip
        return self.windows[start]

    def observe(self, at, features, confidence, predicted, latency, labels, error, fallback, timeout):  # noqa: PLR0917 - one call, as observed
        w, rows = self.window(at), features.shape[0]
        w["n"] += rows
        w["errors"] += rows * error
        w["fallbacks"] += rows * fallback
        w["timeouts"] += rows * timeout
        w["latency"][_reference_bin(LATENCY_EDGES_MS, latency)] += rows
        w["latency_sum"] += latency * rows
        for row in features:
            for index, value in enumerate(row.tolist()):
                w["features"][index][_reference_bin(self.layout.feature_edges[index], value)] += 1
        if confidence is None:
            return
        for row, (value, top1) in enumerate(zip(confidence.tolist(), predicted.tolist(), strict=True)):
            w["confidence"][_reference_bin(self.layout.confidence_edges, value)] += 1
            w["predicted"][top1] += 1
            label = -1 if labels is None else int(labels[row])
            w["n_labelled"] += label >= 0
            w["n_correct"] += label >= 0 and label == top1
        values = confidence.astype(np.float64)
        if rows == 1:  # a single row's sums are plain float arithmetic; a batch's are numpy's sum and dot
            w["confidence_sum"] += float(values[0])
            w["confidence_sum_sq"] += float(values[0]) * float(values[0])
        else:
            w["confidence_sum"] += float(np.sum(values))
            w["confidence_sum_sq"] += float(np.dot(values, values))


def _as_reference(summary):
    return {
        "n": summary.n, "errors": summary.errors, "fallbacks": summary.fallbacks, "timeouts": summary.timeouts,
        "n_labelled": summary.n_labelled, "n_correct": summary.n_correct,
        "latency": list(summary.latency_counts), "latency_sum": summary.latency_sum_ms,
        "confidence": list(summary.confidence_counts), "predicted": list(summary.predicted_counts),
        "confidence_sum": summary.confidence_sum, "confidence_sum_sq": summary.confidence_sum_sq,
        "features": [list(counts) for counts in summary.feature_counts],
    }  # fmt: skip


CONFIDENCE_EDGES = [(0.0, 0.2, 0.5, 0.9, 1.0), (0.1, 0.5, 0.9), (0.25, 0.33, 0.9, 0.95)]  # per seed: outer bins too


def observe_as_arrays(summarizer, features, confidence, predicted, latency, **flags):
    summarizer.observe(features, confidence, predicted, latency, **flags)


def observe_rows_as_numbers(summarizer, features, confidence, predicted, latency, **flags):
    """Answered, unlabelled one-row calls in plain numbers (as the Predictor makes them), the rest as arrays."""
    answered_row = confidence is not None and len(confidence) == 1 and flags["labels"] is None
    if not (answered_row and not flags["error"] and not flags["timeout"]):
        summarizer.observe(features, confidence, predicted, latency, **flags)
        return
    summarizer.observe_row(features, confidence.item(), predicted.item(), latency, fallback=flags["fallback"])


def as_float64(features, rng):
    """Every call's features as they came."""
    return features


def as_float32(features, rng):
    """A float model's input: values near float64 edges that float32 cannot hold."""
    return features.astype(np.float32)


def float32_or_float64(features, rng):
    """Calls of both dtypes in one window: both pending blocks fill and drain into it."""
    return features.astype(np.float32) if rng.uniform() < 0.5 else features


@pytest.mark.parametrize("dtype", [as_float64, as_float32, float32_or_float64])
@pytest.mark.parametrize("observe", [observe_as_arrays, observe_rows_as_numbers])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_counting_equals_counting_each_row_at_once(seed, observe, dtype):
    # Random calls, mostly one row, across window ends and flushes; values on edges, outside them, NaN and infinite.
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, 300))
    edges = tuple(
        (-INF, *np.unique(rng.normal(0, 1, rng.integers(1, 12)).round(1)).tolist(), INF) for _ in range(width)
    )
    layout = SummaryLayout(edges, CONFIDENCE_EDGES[seed], 4, (("x", width),))
    clock = ManualClock(START)
    summarizer = Summarizer(layout, "m", "1.0.0", "active", clock, 60, salt=b"s")
    reference = _ReferenceSummarizer(layout, 60)
    got, special = [], np.array([np.nan, np.inf, -np.inf, 0.0, 0.1, -0.1, 1.0])
    for _ in range(1500):
        rows = 1 if rng.uniform() < 0.9 else int(rng.integers(2, 6))
        features = rng.normal(0, 1.2, (rows, width)).round(1)
        features[rng.uniform(size=features.shape) < 0.05] = rng.choice(special)
        features = dtype(features, rng)
        failed = rng.uniform() < 0.1
        error, timeout = (failed, False) if rng.uniform() < 0.5 else (False, failed)
        confidence = None if failed else rng.choice([0.0, 0.2, 0.5, 0.9, 1.0, 0.33], rows).astype(np.float32)
        predicted = None if failed else rng.integers(0, 4, rows)
        labels = rng.integers(-1, 4, rows) if rng.uniform() < 0.3 else None
        latency = float(rng.choice([0.0, 0.5, 1.0, 3.7, 250.0, 1e6]))
        fallback = bool(rng.uniform() < 0.1)
        observe(
            summarizer,
            features,
            confidence,
            predicted,
            latency,
            error=error,
            timeout=timeout,
            fallback=fallback,
            labels=labels,
        )
        reference.observe(clock.now(), features, confidence, predicted, latency, labels, error, fallback, timeout)
        clock.advance(float(rng.exponential(0.5)))
        if rng.uniform() < 0.01:
            got += summarizer.flush()
    got += summarizer.flush(final=True)

    assert sorted(summary.window_start.timestamp() for summary in got) == sorted(reference.windows)
    for summary in got:
        assert _as_reference(summary) == reference.windows[int(summary.window_start.timestamp())]


FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = 2.0**-149  # the smallest positive float32 (subnormal)


def float32_below(value):
    return float(np.nextafter(np.float32(value), np.float32(-INF)))


def float32_above(value):
    return float(np.nextafter(np.float32(value), np.float32(INF)))


# interior edges of one feature -> (a float32 value, the bin it counts in); float32 rows are compared in float32
FLOAT32_EDGES = {
    "on an edge float32 holds": ((0.5,), 0.5, 1),
    "just below an edge float32 holds": ((0.5,), float32_below(0.5), 0),
    "just above an edge float32 holds": ((0.5,), float32_above(0.5), 1),
    "the float32 nearest an edge it rounds down stays below": ((0.7,), float(np.float32(0.7)), 0),
    "the float32 after an edge it rounds down reaches it": ((0.7,), float32_above(0.7), 1),
    "the float32 nearest an edge it rounds up reaches it": ((0.1,), float(np.float32(0.1)), 1),
    "the float32 before an edge it rounds up stays below": ((0.1,), float32_below(0.1), 0),
    "the largest float32 below an edge past the float32 range": ((1e39,), FLOAT32_MAX, 0),
    "the largest float32 below an edge that rounds down to it": ((FLOAT32_MAX + 2.0**102,), FLOAT32_MAX, 0),
    "the largest float32 on its own edge": ((FLOAT32_MAX,), FLOAT32_MAX, 1),
    "infinity past an edge past the float32 range": ((1e39,), INF, 1),
    "the lowest float32 above an edge below the float32 range": ((-1e39,), -FLOAT32_MAX, 1),
    "minus infinity below an edge below the float32 range": ((-1e39,), -INF, 0),
    "zero below a positive edge smaller than any float32": ((1e-50,), 0.0, 0),
    "the smallest float32 above a positive edge smaller than it": ((1e-50,), FLOAT32_TINY, 1),
    "minus zero above a negative edge closer to zero than any float32": ((-1e-50,), -0.0, 1),
    "the negative float32 nearest zero below that edge": ((-1e-50,), -FLOAT32_TINY, 0),
    "minus zero on a zero edge": ((0.0,), -0.0, 1),
    "NaN in the first bin": ((0.1, 0.7), math.nan, 0),
    "infinity in the last bin": ((0.1, 0.7), INF, 2),
    "minus infinity in the first bin": ((0.1, 0.7), -INF, 0),
    "between two edges float32 cannot hold": ((0.1, 0.7), float(np.float32(0.7)), 1),
}
WIDER = (-INF, -1.0, 0.0, 1.0, 2.0, INF)  # a second feature with more bins: the first one's edges are padded


@pytest.mark.parametrize("case", list(FLOAT32_EDGES))
def test_float32_features_count_in_the_bins_of_the_float64_edges(case):
    interior, value, expected = FLOAT32_EDGES[case]
    edges = (-INF, *interior, INF)
    assert _reference_bin(edges, value) == expected  # the table is right: float32 values, counted in Python
    layout = SummaryLayout((edges, WIDER), (0.0, 1.0), 2, (("x", 2),))
    summarizer = Summarizer(layout, "m", "1.0.0", "active", ManualClock(START), salt=b"s")
    row = np.array([[value, 0.0]], np.float32)
    assert float(row[0, 0]) == value or math.isnan(value)

    summarizer.observe_row(row, 0.5, 1, 1.0)  # the float32 block
    summarizer.observe(row, np.array([0.5]), np.array([1]), 1.0)  # the float32 block, the checked way
    summarizer.observe(np.repeat(row, 3, axis=0), np.full(3, 0.5), np.ones(3, np.int64), 1.0)  # a float32 batch
    summarizer.observe_row(row.astype(np.float64), 0.5, 1, 1.0)  # the float64 block

    first, wider = only(summarizer.flush(final=True)).feature_counts
    assert first[expected] == sum(first) == 6, first
    assert wider == (0, 0, 6, 0, 0)


def test_float32_and_float64_rows_of_one_window_count_together():
    # 64 float32 rows fill their block (binned when full), 40 float64 rows stay pending in theirs until the flush.
    layout = SummaryLayout(((-INF, 0.7, INF), WIDER), (0.0, 1.0), 2, (("x", 2),))
    summarizer = Summarizer(layout, "m", "1.0.0", "active", ManualClock(START), salt=b"s")
    just_below = np.array([[np.float32(0.7), 0.5]], np.float32)  # below the float64 edge 0.7
    on_edge = np.array([[0.7, 0.5]])

    for _ in range(64):
        summarizer.observe_row(just_below, 0.5, 1, 1.0)
    for _ in range(40):
        summarizer.observe_row(on_edge, 0.5, 1, 1.0)

    assert only(summarizer.flush(final=True)).feature_counts == ((64, 40), (0, 0, 104, 0, 0))


FINITE_EDGE = st.floats(allow_nan=False, allow_infinity=False)
FLOAT32_EDGE = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _float32_around(edge):
    """The float32 nearest an edge and its two neighbours: where rounding the edge to float32 would go wrong."""
    with np.errstate(over="ignore"):  # past the float32 range: infinity
        nearest = np.float32(edge)
        return [float(nearest), float32_below(nearest), float32_above(nearest)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_float32_rows_count_like_the_reference_on_any_edges(data):
    interior = sorted(data.draw(st.sets(st.one_of(FINITE_EDGE, FLOAT32_EDGE), max_size=9)))
    around = [value for edge in interior for value in _float32_around(edge)]
    value = st.floats(width=32) if not around else st.one_of(st.sampled_from(around), st.floats(width=32))
    values = data.draw(st.lists(value, min_size=1, max_size=100))
    edges = (-INF, *interior, INF)
    layout = SummaryLayout((edges, WIDER), (0.0, 1.0), 2, (("x", 2),))
    summarizer = Summarizer(layout, "m", "1.0.0", "active", ManualClock(START), salt=b"s")
    features = np.array([[value, 0.0] for value in values], np.float32)

    for row in features:
        summarizer.observe_row(row[None, :], 0.5, 1, 1.0)
    summarizer.observe(features, np.full(len(values), 0.5), np.ones(len(values), np.int64), 1.0)

    expected = [0] * (len(edges) - 1)
    for value in features[:, 0].tolist():
        expected[_reference_bin(edges, value)] += 2
    assert only(summarizer.flush(final=True)).feature_counts[0] == tuple(expected)


def test_a_feature_with_the_most_bins_counts_its_last_bin():
    edges = (-INF, *map(float, range(MAX_BINS - 1)), INF)  # MAX_BINS bins, MAX_BINS - 1 interior edges
    layout = SummaryLayout((edges,), (0.0, 1.0), 2, (("x", 1),))
    summarizer = Summarizer(layout, "m", "1.0.0", "active", ManualClock(START), salt=b"s")
    for value in (1e9, -1e9, float("nan"), 7.0, float(MAX_BINS - 2)):
        summarizer.observe(np.array([[value]]), np.array([0.5]), np.array([1]), 1.0)

    counts = only(summarizer.flush(final=True)).feature_counts[0]
    assert (counts[0], counts[8], counts[-1], sum(counts)) == (2, 1, 2, 5)


ANSWERED = (False, False, False)  # error, fallback, timeout


def test_many_bins_and_large_batches_count_like_the_reference():
    # 199 interior edges x 40 features: a pending block is compared a few edge rows at a time, and a batch of
    # 300 rows a few rows at a time; both must equal counting each row at once.
    rng = np.random.default_rng(7)
    edges = tuple((-INF, *np.unique(rng.normal(0, 1, 199).round(3)).tolist(), INF) for _ in range(40))
    layout = SummaryLayout(edges, (0.0, 0.5, 1.0), 2, (("x", 40),))
    clock = ManualClock(START)
    summarizer = Summarizer(layout, "m", "1.0.0", "active", clock, 60, salt=b"s")
    reference = _ReferenceSummarizer(layout, 60)
    for rows in (300, *([1] * 150), 2, 1):
        features = rng.normal(0, 1.2, (rows, 40)).round(3)
        confidence, predicted = np.full(rows, 0.5), rng.integers(0, 2, rows)
        summarizer.observe(features, confidence, predicted, 1.0)
        reference.observe(clock.now(), features, confidence, predicted, 1.0, None, *ANSWERED)

    summary = only(summarizer.flush(final=True))
    assert _as_reference(summary) == reference.windows[int(summary.window_start.timestamp())]


def test_a_batch_of_more_rows_than_a_byte_holds_counts_every_row():
    layout = SummaryLayout(((-INF, 0.0, 1.0, INF),), (0.0, 1.0), 2, (("x", 1),))
    summarizer = Summarizer(layout, "m", "1.0.0", "active", ManualClock(START), salt=b"s")
    rows = 1000  # every row reaches both interior edges: per-pass sums near a byte's limit must not wrap

    summarizer.observe(np.full((rows, 1), INF), np.full(rows, 0.5), np.zeros(rows, np.int64), 1.0)
    summarizer.observe(np.full((1, 1), 0.5), np.array([0.5]), np.array([0]), 1.0)

    assert only(summarizer.flush(final=True)).feature_counts == ((0, 1, rows),)


def test_features_of_a_single_bin_count_every_row_in_it():
    layout = SummaryLayout(((-INF, INF), (0.0, 1.0)), (0.0, 1.0), 2, (("x", 2),))
    summarizer = Summarizer(layout, "m", "1.0.0", "active", ManualClock(START), salt=b"s")

    summarizer.observe(np.array([[5.0, -1.0]]), np.array([0.5]), np.array([1]), 1.0)
    summarizer.observe(np.zeros((3, 2)), np.full(3, 0.5), np.zeros(3, np.int64), 1.0)

    assert only(summarizer.flush(final=True)).feature_counts == ((4,), (4,))
