"""The streaming summarizer: every inference counted into fixed bins, one summary per window.

A :class:`Summarizer` belongs to one (model, version, role) on one device. It
keeps counts only (never an input), on the bins the bundle signed: its feature
reference edges, its confidence edges and the wire format's latency edges.
Windows are aligned to multiples of ``window_seconds`` since the Unix epoch, so
every device's windows line up and the server can roll them up by time.

Observing is on the application's critical path. A one-row call (a device's
common case) is checked, its sums, outcome, latency, confidence and class counted
at once in plain Python (``observe_row`` takes the row's scores as plain numbers,
so the Predictor hands over no small arrays to check), and its raw features copied
into a preallocated block; the block is binned in one vectorized pass when it is
full, when the window changes and before every flush. So the caller pays a copy,
and the binning is shared by a block of rows: the
bin edges are precomputed into one padded matrix, every feature of every row is
compared with every edge in one broadcast comparison, and a window keeps, per
(edge, feature), how many rows reached it (bin counts are the differences), so a
block costs three numpy calls instead of ``F`` ``searchsorted`` calls or an index
per value and a ``bincount``. Float32 rows (a float model's input, which the
Predictor hands over as it is) stay float32: they are copied into a float32 block
and compared with the edges rounded up to float32, which for a float32 value is
the same comparison (see :func:`_float32_at_or_above`), with half the bytes to copy
and compare; other rows are converted into a float64 block. Counts are integers
and the float sums are still added call by call, in order, so the summaries are
identical to counting each row at once. Batches are binned when observed.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from modelfleet.clock import Clock, SystemClock
from modelfleet.telemetry._schema import LATENCY_EDGES_MS, MAX_BINS, MAX_FEATURES, Role, ShadowStats, Summary

__all__ = ["ShadowComparison", "Summarizer", "SummaryLayout"]

Counts = npt.NDArray[np.int64]
Labels = npt.NDArray[np.integer[Any]] | None
_LATENCY_EDGES = np.asarray(LATENCY_EDGES_MS)
_LATENCY_LAST = len(LATENCY_EDGES_MS) - 2
_ID_HEX = 32
_BLOCK_BYTES = 1 << 16  # a pending block's values (64 KiB): small enough to stay in cache
_BLOCK_ROWS = 64
_FLOAT32 = np.dtype(np.float32)
# Comparisons one binning pass holds (160 KiB of bools), so a pass stays in cache: a full float32 block (16 Ki
# values) against the default 9 interior edges fits one pass, which costs less than two after an inference.
_HITS_VALUES = 160 << 10
_MAX_ROWS_PER_PASS = 255  # a pass's per-(edge, feature) sum of rows is a byte


@dataclass(frozen=True, slots=True)
class SummaryLayout:
    """The bins one model version is counted on: its bundle's reference edges and class count.

    Attributes:
        feature_edges: per reference feature, in feature order, its strictly increasing histogram edges.
        confidence_edges: edges of the top-1 confidence histogram; its last bin includes the upper edge.
        n_classes: classes the predicted-class counts cover.
        input_features: per model input, in feature order, its name and how many features it contributes.
    """

    feature_edges: tuple[tuple[float, ...], ...]
    confidence_edges: tuple[float, ...]
    n_classes: int
    input_features: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        _check_edges("confidence", self.confidence_edges)
        for index, edges in enumerate(self.feature_edges):
            _check_edges(f"feature {index}", edges)
        if self.n_classes < 1:
            msg = f"n_classes must be at least 1, got {self.n_classes}"
            raise ValueError(msg)
        declared = sum(count for _, count in self.input_features)
        if declared != len(self.feature_edges) or len(self.feature_edges) > MAX_FEATURES:
            msg = f"{len(self.feature_edges)} feature edge sets for inputs declaring {declared} features"
            raise ValueError(msg)

    @property
    def input_order(self) -> tuple[str, ...]:
        """The input names in feature order."""
        return tuple(name for name, _ in self.input_features)


def _check_edges(what: str, edges: Sequence[float]) -> None:
    if not 2 <= len(edges) <= MAX_BINS + 1:  # noqa: PLR2004 - one bin needs two edges
        msg = f"{what} histogram needs 2 to {MAX_BINS + 1} edges, got {len(edges)}"
        raise ValueError(msg)
    if any(math.isnan(edge) for edge in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
        msg = f"{what} histogram edges must be strictly increasing numbers"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """The active model's answers on the rows a shadow candidate scored, to count their agreement."""

    predicted: npt.NDArray[np.integer[Any]]
    confidence: npt.NDArray[np.floating[Any]]


class _FeatureBins:
    """All features' interior edges in one ``[K, F]`` matrix; rows counted per (edge, feature) they reach.

    Column ``j`` holds feature ``j``'s interior edges, padded with NaN (never ``<=``
    anything). A value's bin is the number of interior edges at or below it (so NaN
    and values below the first edge count in the first bin, values above the last in
    the last), the way the builder counts. Edges increase, so the rows in bin ``k``
    are the rows that reach edge ``k - 1`` (edge at or below the value) minus those
    that reach edge ``k``: a block of rows is counted by one broadcast comparison
    ``[K, rows, F]`` summed over its rows, with no index per value and no
    ``bincount``. That is three numpy calls per block, and after an inference has
    evicted the caches every numpy call costs microseconds. Float32 values are
    compared with a float32 copy of the edges, rounded up (the same answers).
    """

    def __init__(self, edges: tuple[tuple[float, ...], ...]) -> None:
        self._bins = [len(e) - 1 for e in edges]
        self._edges = np.full((max(self._bins, default=1) - 1, len(edges)), np.nan)
        for column, feature_edges in enumerate(edges):
            self._edges[: len(feature_edges) - 2, column] = feature_edges[1:-1]
        self._edges32 = _float32_at_or_above(self._edges)
        self.count = len(edges)
        self.shape = (self._edges.shape[0], self._edges.shape[1])
        per_pass = max(_HITS_VALUES // max(self._edges.size, 1), 1)
        self.rows_per_pass = min(per_pass, _MAX_ROWS_PER_PASS)

    def reached(self, features: npt.NDArray[np.floating[Any]]) -> Counts:
        """Per (interior edge, feature), how many of the rows reach that edge."""
        reached: Counts = np.zeros(self.shape, np.int64)
        for start in range(0, features.shape[0], self.rows_per_pass):
            self.count_into(reached, features[start : start + self.rows_per_pass])
        return reached

    def edge_rows(self, rows: int) -> int:
        """How many edge rows one pass over ``rows`` rows compares: as few passes as fit, of even sizes."""
        most = max(min(_HITS_VALUES // max(rows * self.count, 1), self.shape[0]), 1)
        passes = max(-(-self.shape[0] // most), 1)
        return max(-(-self.shape[0] // passes), 1)

    def count_into(
        self, reached: Counts, features: npt.NDArray[np.floating[Any]], hits: npt.NDArray[np.bool_] | None = None
    ) -> None:
        """Add the rows (at most 255) that reach each (edge, feature) to ``reached``; many edges go a few at a time.

        ``hits``: a reused ``[edge_rows, at least rows, F]`` buffer for the comparisons (a fresh one can cost
        a page fault per 4 KiB).
        """
        rows, values = features.shape[0], features[None, :, :]
        edges = self._edges32 if features.dtype is _FLOAT32 else self._edges
        step = self.edge_rows(rows) if hits is None else hits.shape[0]
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            out = None if hits is None else hits[: stop - start, :rows]
            passed = np.less_equal(edges[start:stop, None, :], values, out=out)
            # bools are bytes of 0 and 1; a pass holds at most 255 rows, so their sum fits a byte
            reached[start:stop] += np.add.reduce(passed.view(np.uint8), axis=1, dtype=np.uint8)

    def split(self, rows: int, reached: Counts) -> tuple[tuple[int, ...], ...]:
        """Per feature, its bin counts as plain ints: rows reaching each edge minus those reaching the next."""
        steps = np.empty((self.shape[0] + 2, self.count), np.int64)
        steps[0], steps[1:-1], steps[-1] = rows, reached, 0
        counts: list[list[int]] = (steps[:-1] - steps[1:]).T.tolist()
        return tuple(tuple(feature[:bins]) for feature, bins in zip(counts, self._bins, strict=True))


def _float32_at_or_above(edges: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Per edge, the smallest float32 at or above it (NaN stays NaN); ``inf`` past the largest float32.

    For a float32 value ``v`` and that edge ``c``, ``v >= edge`` exactly when ``v >= c``: ``c`` is at or above
    the edge, and no float32 lies in ``[edge, c)``. So float32 values are counted in float32, exactly.
    """
    with np.errstate(over="ignore"):  # past the float32 range: infinity (or the largest float32, then infinity)
        nearest = edges.astype(np.float32)
        below = nearest < edges  # compared in float64, exactly; NaN is never below
        return np.where(below, np.nextafter(nearest, np.float32(np.inf)), nearest)


Increment = int | Counts
"""One row's bin index, or a whole batch's counts per bin."""

_ONE = (1,)
_RowScore = tuple[float, int, int, int]
"""One answered row: confidence, predicted class, labelled (0/1), correct (0/1)."""


def _bump(counts: Counts, increment: Increment) -> None:
    """Add one row at a bin index, or a batch's per-bin counts."""
    if isinstance(increment, int):
        counts[increment] += 1
    else:
        counts += increment


def _tally(index: npt.NDArray[np.intp], size: int) -> Counts:
    """Per-bin counts of a batch's bin indices."""
    return np.bincount(index.ravel(), minlength=size).astype(np.int64, copy=False)


def _latency_bin(latency_ms: float) -> int:
    """A latency's bin on the wire format's edges (the last bin is closed)."""
    return min(max(bisect.bisect_right(LATENCY_EDGES_MS, latency_ms) - 1, 0), _LATENCY_LAST)


def _bin_index(
    edges: npt.NDArray[np.float64], values: npt.NDArray[np.floating[Any]], last: int
) -> npt.NDArray[np.intp]:
    """Bin of each value: edges at or below it, minus one, clipped to ``[0, last]`` (the last bin is closed)."""
    index = np.searchsorted(edges, values, side="right") - 1
    return np.minimum(np.maximum(index, 0), last)


@dataclass(frozen=True, slots=True)
class _Scored:
    """What one call's answered rows add to a window, prepared outside the lock."""

    confidence: Increment
    predicted: Increment
    confidence_sum: float
    confidence_sum_sq: float
    n_labelled: int
    n_correct: int


class _Shadow:
    """Agreement of a shadow candidate with the active model over one window."""

    __slots__ = (
        "active_confidence_sum",
        "active_correct",
        "candidate_correct",
        "n_agree",
        "n_compared",
        "n_labelled",
        "only_active_correct",
        "only_candidate_correct",
    )

    def __init__(self) -> None:
        self.n_compared = self.n_agree = self.n_labelled = 0
        self.active_correct = self.candidate_correct = self.only_active_correct = self.only_candidate_correct = 0
        self.active_confidence_sum = 0.0

    def add(self, candidate: npt.NDArray[np.integer[Any]], active: ShadowComparison, labels: Labels) -> None:
        """Count agreement (and, where labelled, who was right) on the compared rows."""
        self.n_compared += len(candidate)
        self.n_agree += int(np.count_nonzero(candidate == active.predicted))
        self.active_confidence_sum += float(np.sum(active.confidence))
        if labels is None:
            return
        known = labels >= 0
        active_right = (active.predicted == labels) & known
        candidate_right = (candidate == labels) & known
        self.n_labelled += int(np.count_nonzero(known))
        self.active_correct += int(np.count_nonzero(active_right))
        self.candidate_correct += int(np.count_nonzero(candidate_right))
        self.only_active_correct += int(np.count_nonzero(active_right & ~candidate_right))
        self.only_candidate_correct += int(np.count_nonzero(candidate_right & ~active_right))

    def stats(self, active_version: str) -> ShadowStats:
        """The wire form."""
        return ShadowStats(active_version=active_version, **{name: getattr(self, name) for name in self.__slots__})


class _Window:
    """The counts of one window.

    One-row calls count latency and confidence by how many edges are at or below them (one bisect and a
    list increment: a fraction of a numpy call on the caller's path) and their class in plain lists, which
    join the batches' arrays in the summary, where edges reached become bins.
    """

    def __init__(
        self, start: int, seconds: int, feature_edges: tuple[int, int], confidence_bins: int, n_classes: int
    ) -> None:
        self.start, self.end = start, start + seconds
        self.n = self.errors = self.fallbacks = self.timeouts = self.n_labelled = self.n_correct = 0
        self.latency: Counts = np.zeros(len(LATENCY_EDGES_MS) - 1, np.int64)
        self.feature_rows = 0
        self.reached: Counts = np.zeros(feature_edges, np.int64)  # rows per (interior edge, feature) they reach
        self.confidence: Counts = np.zeros(confidence_bins, np.int64)
        self.predicted: Counts = np.zeros(n_classes, np.int64)
        self.latency_sum = self.confidence_sum = self.confidence_sum_sq = 0.0
        self.shadow: _Shadow | None = None
        self.row_latency = [0] * (len(LATENCY_EDGES_MS) + 1)  # by edges at or below: 0 .. len(edges)
        self.row_confidence = [0] * (confidence_bins + 2)
        self.row_predicted = [0] * n_classes

    def add_outcome(self, rows: int, *, error: bool, fallback: bool, timeout: bool) -> None:
        """Count the rows and how their inference ended."""
        self.n += rows
        self.errors += rows * error
        self.fallbacks += rows * fallback
        self.timeouts += rows * timeout

    def add_latency(self, latency_ms: float | npt.NDArray[np.floating[Any]], rows: int) -> None:
        """Count every row's latency (a scalar is the latency each row of the call waited)."""
        if isinstance(latency_ms, np.ndarray):
            self.latency += _tally(_bin_index(_LATENCY_EDGES, latency_ms, _LATENCY_LAST), self.latency.size)
            self.latency_sum += float(np.sum(latency_ms))
            return
        self.latency[_latency_bin(latency_ms)] += rows
        self.latency_sum += latency_ms * rows

    def add_features(self, rows: int, reached: Counts) -> None:
        """Count rows by the (edge, feature) pairs they reach."""
        self.feature_rows += rows
        self.reached += reached

    def add_scores(self, scored: _Scored) -> None:
        """Count confidence, predicted classes and labelled outcomes."""
        _bump(self.confidence, scored.confidence)
        _bump(self.predicted, scored.predicted)
        self.confidence_sum += scored.confidence_sum
        self.confidence_sum_sq += scored.confidence_sum_sq
        self.n_labelled += scored.n_labelled
        self.n_correct += scored.n_correct


class _Block:
    """Rows of one dtype not binned yet, in a preallocated block of at most 64 KiB, and its comparison buffer."""

    __slots__ = ("capacity", "hits", "rows", "values")

    def __init__(self, features: _FeatureBins, dtype: type[np.floating[Any]], hits: npt.NDArray[np.bool_]) -> None:
        self.capacity = _block_rows(features, dtype)
        self.values: npt.NDArray[np.floating[Any]] = np.empty((self.capacity, features.count), dtype)
        self.hits = hits[: _hits_size(features, self.capacity)].reshape(-1, self.capacity, features.count)
        self.rows = 0


def _block_rows(features: _FeatureBins, dtype: type[np.floating[Any]]) -> int:
    """The rows a block of ``dtype`` values holds."""
    return min(max(_BLOCK_BYTES // (np.dtype(dtype).itemsize * max(features.count, 1)), 1), _BLOCK_ROWS)


def _hits_size(features: _FeatureBins, rows: int) -> int:
    """The comparisons one pass over a block of ``rows`` rows holds."""
    return features.edge_rows(rows) * rows * features.count


class _Pending:
    """The features of one window's one-row calls not binned yet: float32 rows in a float32 block, others in float64.

    A float32 row (a float model's input, as the Predictor hands it over) is copied as it is, which right after
    an inference costs half what converting it does, and a 64 KiB block holds twice the rows; any other row is
    converted into the float64 block, exactly as before. The blocks take turns with one comparison buffer.
    """

    def __init__(self, features: _FeatureBins) -> None:
        self._bins = features
        hits = np.empty(max(_hits_size(features, _block_rows(features, t)) for t in (np.float32, np.float64)), bool)
        self._float32 = _Block(features, np.float32, hits)
        self._float64 = _Block(features, np.float64, hits)
        self.window: _Window | None = None

    def block_of(self, row: npt.NDArray[Any]) -> _Block:
        """The block a row of this dtype is copied into."""
        return self._float32 if row.dtype is _FLOAT32 else self._float64

    def add(self, row: npt.NDArray[Any]) -> None:
        """Copy one row's features (``[F]``) in; bin its block when it is full.

        A ``[F]`` row, not a ``[1, F]`` call: numpy copies a row into a row several microseconds faster
        than it drops a leading axis, right after an inference has evicted the caches.
        """
        block = self._float32 if row.dtype is _FLOAT32 else self._float64  # block_of, without a call
        block.values[block.rows] = row
        block.rows += 1
        if block.rows == block.capacity:
            self._count(block)

    def drain(self) -> None:
        """Count both blocks into their window, each in vectorized passes (one for the default bins)."""
        self._count(self._float32)
        self._count(self._float64)

    def _count(self, block: _Block) -> None:
        window, rows = self.window, block.rows
        if window is None or rows == 0:
            return
        window.feature_rows += rows
        self._bins.count_into(window.reached, block.values[:rows], block.hits)
        block.rows = 0


def _binned(reached: list[int]) -> list[int]:
    """Counts by edges at or below a value as bin counts: below the first bin counts in it, past the last in it."""
    counts = reached[1:-1]
    counts[0] += reached[0]
    counts[-1] += reached[-1]
    return counts


@dataclass(frozen=True, slots=True)
class _Identity:
    """Who the summaries are about."""

    model: str
    version: str
    role: Role
    active_version: str | None


class Summarizer:
    """Counts one (model, version, role)'s inferences into windows of ``window_seconds``; thread-safe.

    Summary ids are ``sha256(model, version, role, window start, window length,
    sequence number, salt)``: deterministic for a given salt, never repeated by one
    summarizer (the sequence number grows with every summary it emits, so a window
    flushed early and observed again gets a new id), and unguessable across
    summarizers because the salt is random per instance unless injected.

    Args:
        layout: the bins, from the bundle the version came in.
        model: model name.
        version: the version whose inferences are counted.
        role: ``active``, ``shadow`` or ``time_slice``.
        clock: where window times come from.
        window_seconds: window length, 1 s to 1 day.
        active_version: for the ``shadow`` role, the version the candidate is compared with.
        salt: bytes mixed into summary ids; random when not given.

    Raises:
        ValueError: a bad window length, ``active_version`` missing for the ``shadow`` role or given for another.
    """

    def __init__(  # noqa: PLR0917 - the identity of a summary reads naturally in order
        self,
        layout: SummaryLayout,
        model: str,
        version: str,
        role: Role,
        clock: Clock,
        window_seconds: int = 300,
        *,
        active_version: str | None = None,
        salt: bytes | None = None,
    ) -> None:
        if not 1 <= window_seconds <= 86_400:  # noqa: PLR2004 - the wire schema's bounds
            msg = f"window_seconds must be between 1 and 86400, got {window_seconds}"
            raise ValueError(msg)
        if (role == "shadow") != (active_version is not None):
            msg = "active_version is required for the shadow role, and only for it"
            raise ValueError(msg)
        self.layout = layout
        self.identity = _Identity(model, version, role, active_version)
        self.window_seconds = window_seconds
        self._clock = clock
        # the system clock's timestamp without a datetime in between: 3 us less per call right after an inference
        self._timestamp: Callable[[], float] = time.time if type(clock) is SystemClock else _timestamp_of(clock)
        self._salt = os.urandom(16) if salt is None else salt
        self._features = _FeatureBins(layout.feature_edges)
        self._confidence_edges = np.asarray(layout.confidence_edges)
        self._confidence_last = len(layout.confidence_edges) - 2
        self._windows: dict[int, _Window] = {}
        self._current: _Window | None = None
        self._pending = _Pending(self._features)
        self._row_shape = (1, self._features.count)
        self._sequence = 0
        self._lock = threading.Lock()

    def observe(
        self,
        features_per_row: npt.NDArray[np.floating[Any]],
        confidence: npt.NDArray[np.floating[Any]] | None,
        predicted: npt.NDArray[np.integer[Any]] | None,
        latency_ms: float | npt.NDArray[np.floating[Any]],
        *,
        error: bool = False,
        fallback: bool = False,
        timeout: bool = False,
        labels: npt.NDArray[np.integer[Any]] | None = None,
        shadow: ShadowComparison | None = None,
    ) -> None:
        """Count one call's rows: features always, scores only when the model answered.

        Args:
            features_per_row: ``[rows, F]`` features in layout order.
            confidence: ``[rows]`` top-1 confidence in [0, 1]; ``None`` when the inference failed.
            predicted: ``[rows]`` top-1 class; ``None`` when the inference failed.
            latency_ms: the call's latency (each row waited that long) or one latency per row.
            error: the inference failed (runtime error, crash, unusable output).
            fallback: the caller got a fallback answer instead of this version's.
            timeout: the inference did not finish within its bound.
            labels: ``[rows]`` ground truth where known, negative where not; counts only answered rows.
            shadow: the active model's answers on the same rows (``shadow`` role only).

        Raises:
            ValueError: shapes or values that cannot be counted (nothing is counted then).
        """
        if (
            labels is None
            and shadow is None
            and not (error or timeout)
            and confidence is not None
            and predicted is not None
            and features_per_row.shape == self._row_shape
            and self._answered_row(features_per_row, confidence, predicted, latency_ms, fallback=fallback)
        ):
            return
        if error and timeout:
            msg = "an inference either failed or timed out, not both (errors + timeouts must not exceed n)"
            raise ValueError(msg)
        rows = self._check(features_per_row, latency_ms, labels, shadow, failed=error or timeout)
        if rows == 1 and shadow is None and not isinstance(latency_ms, np.ndarray):
            score = self._row_score(confidence, predicted, labels, failed=error or timeout)
            self._observe_row(
                features_per_row, float(latency_ms), score, error=error, fallback=fallback, timeout=timeout
            )
            return
        scored = self._scored(rows, confidence, predicted, labels, failed=error or timeout)
        if rows == 0:
            return
        reached = self._features.reached(features_per_row)
        with self._lock:
            window = self._window(self._timestamp())
            window.add_outcome(rows, error=error, fallback=fallback, timeout=timeout)
            window.add_latency(latency_ms, rows)
            window.add_features(rows, reached)
            if scored is not None:
                window.add_scores(scored)
            if shadow is not None and predicted is not None:
                window.shadow = window.shadow or _Shadow()
                window.shadow.add(predicted, shadow, labels)

    def observe_row(
        self,
        features: npt.NDArray[np.floating[Any]],
        confidence: float,
        predicted: int,
        latency_ms: float,
        *,
        fallback: bool = False,
    ) -> None:
        """Count one answered, unlabelled row whose scores are plain numbers: a device's common call, kept short.

        It counts what ``observe(features, np.array([confidence]), np.array([predicted]), latency_ms,
        fallback=fallback)`` counts, and leaves what it does not take to that call, which names the error.

        Args:
            features: ``[1, F]`` features in layout order.
            confidence: the top-1 confidence, in [0, 1].
            predicted: the top-1 class.
            latency_ms: the call's latency.
            fallback: the caller got a fallback answer instead of this version's.

        Raises:
            ValueError: shapes or values that cannot be counted (nothing is counted then).
        """
        if features.shape != self._row_shape or not self._counted_row(
            features[0], confidence, predicted, latency_ms, fallback
        ):
            self.observe(features, np.array([confidence]), np.array([predicted]), latency_ms, fallback=fallback)

    def flush(self, now: datetime | None = None, *, final: bool = False) -> list[Summary]:
        """Close and return the windows that ended by ``now`` (all of them if ``final``), oldest first."""
        moment = (now or self._clock.now()).timestamp()
        with self._lock:
            self._pending.drain()
            self._pending.window = None
            closing = sorted(
                (w for w in self._windows.values() if final or w.end <= moment), key=lambda window: window.start
            )
            for window in closing:
                del self._windows[window.start]
            if self._current is not None and self._current.start not in self._windows:
                self._current = None
            return [self._summary(window) for window in closing]

    # ------------------------------------------------------------------ internals

    def _answered_row(
        self,
        features: npt.NDArray[Any],
        confidence: npt.NDArray[np.floating[Any]],
        predicted: npt.NDArray[np.integer[Any]],
        latency_ms: float | npt.NDArray[np.floating[Any]],
        *,
        fallback: bool,
    ) -> bool:
        """Count the common call (one answered, unlabelled row) with as few steps as it can; ``False``: not it.

        Anything it does not take (other shapes, values out of range) goes the checked way, which names the error.
        """
        if confidence.shape != _ONE or predicted.shape != _ONE or isinstance(latency_ms, np.ndarray):
            return False
        # item(): a Python number without a numpy scalar in between (microseconds less with cold caches)
        return self._counted_row(features[0], float(confidence.item()), int(predicted.item()), latency_ms, fallback)

    def _counted_row(
        self, row: npt.NDArray[Any], confidence: float, predicted: int, latency_ms: float, fallback: bool
    ) -> bool:
        """Count one answered, unlabelled row (``[F]`` features) at once; ``False``, counting nothing: out of range."""
        if not (0.0 <= confidence <= 1.0 and 0 <= predicted < self.layout.n_classes and 0.0 <= latency_ms < math.inf):
            return False
        value, top1, latency = float(confidence), int(predicted), float(latency_ms)
        with self._lock:
            timestamp, window = self._timestamp(), self._current
            if window is None or not window.start <= timestamp < window.end:
                window = self._window(timestamp)
            pending = self._pending
            if pending.window is not window:
                pending.drain()
                pending.window = window
            window.n += 1
            window.fallbacks += fallback
            window.latency_sum += latency
            window.confidence_sum += value
            window.confidence_sum_sq += value * value
            window.row_latency[bisect.bisect_right(LATENCY_EDGES_MS, latency)] += 1
            window.row_confidence[bisect.bisect_right(self.layout.confidence_edges, value)] += 1
            window.row_predicted[top1] += 1
            pending.add(row)
        return True

    def _observe_row(
        self,
        features: npt.NDArray[Any],
        latency_ms: float,
        score: _RowScore | None,
        *,
        error: bool,
        fallback: bool,
        timeout: bool,
    ) -> None:
        """Count one checked row: outcome and sums now, its bins with the rest of its block."""
        with self._lock:
            window = self._window(self._timestamp())
            pending = self._pending
            if pending.window is not window:
                pending.drain()
                pending.window = window
            window.n += 1
            window.errors += error
            window.fallbacks += fallback
            window.timeouts += timeout
            window.latency_sum += latency_ms
            window.row_latency[bisect.bisect_right(LATENCY_EDGES_MS, latency_ms)] += 1
            if score is not None:
                confidence, predicted, labelled, correct = score
                window.confidence_sum += confidence
                window.confidence_sum_sq += confidence * confidence
                window.n_labelled += labelled
                window.n_correct += correct
                window.row_confidence[bisect.bisect_right(self.layout.confidence_edges, confidence)] += 1
                window.row_predicted[predicted] += 1
            pending.add(features[0])

    def _row_score(
        self,
        confidence: npt.NDArray[np.floating[Any]] | None,
        predicted: npt.NDArray[np.integer[Any]] | None,
        labels: Labels,
        *,
        failed: bool,
    ) -> _RowScore | None:
        """Check one row's scores as plain numbers: (confidence, class, labelled, correct); ``None`` if it failed."""
        if failed or confidence is None or predicted is None:
            if not failed or confidence is not None or predicted is not None:
                msg = "give confidence and predicted for answered inferences, and neither for failed ones"
                raise ValueError(msg)
            return None
        if confidence.shape != (1,) or predicted.shape != (1,):
            shapes = f"{list(confidence.shape)} and {list(predicted.shape)}"
            msg = f"confidence and predicted need one value per row (1), got {shapes}"
            raise ValueError(msg)
        value, top1 = float(confidence[0]), int(predicted[0])
        _check_score_range(value, value, top1, top1, self.layout.n_classes)
        label = -1 if labels is None else int(labels[0])
        return value, top1, int(label >= 0), int(label >= 0 and label == top1)

    def _window(self, timestamp: float) -> _Window:
        """The window ``timestamp`` falls in, created on first use."""
        current = self._current
        if current is not None and current.start <= timestamp < current.end:
            return current
        start = int(timestamp // self.window_seconds) * self.window_seconds
        window = self._windows.get(start)
        if window is None:
            shape = (self._features.shape, len(self.layout.confidence_edges) - 1, self.layout.n_classes)
            window = self._windows[start] = _Window(start, self.window_seconds, *shape)
        self._current = window
        return window

    def _confidence_bin(self, confidence: float) -> int:
        """A confidence's bin; a value on the last edge counts in the last bin, as the builder counts it."""
        return min(max(bisect.bisect_right(self.layout.confidence_edges, confidence) - 1, 0), self._confidence_last)

    def _scored(
        self,
        rows: int,
        confidence: npt.NDArray[np.floating[Any]] | None,
        predicted: npt.NDArray[np.integer[Any]] | None,
        labels: Labels,
        *,
        failed: bool,
    ) -> _Scored | None:
        """Validate and prepare the scores of answered rows; ``None`` for a failed inference."""
        if failed or confidence is None or predicted is None:
            if not failed or confidence is not None or predicted is not None:
                msg = "give confidence and predicted for answered inferences, and neither for failed ones"
                raise ValueError(msg)
            return None
        if confidence.shape != (rows,) or predicted.shape != (rows,):
            shapes = f"{list(confidence.shape)} and {list(predicted.shape)}"
            msg = f"confidence and predicted need one value per row ({rows}), got {shapes}"
            raise ValueError(msg)
        if rows == 1:
            return self._scored_row(float(confidence[0]), int(predicted[0]), None if labels is None else int(labels[0]))
        return self._scored_rows(confidence, predicted, labels)

    def _scored_row(self, confidence: float, predicted: int, label: int | None) -> _Scored:
        """One row, in plain Python numbers: the common case on a device, kept cheap."""
        _check_score_range(confidence, confidence, predicted, predicted, self.layout.n_classes)
        labelled = label is not None and label >= 0
        return _Scored(
            self._confidence_bin(confidence),
            predicted,
            confidence,
            confidence * confidence,
            int(labelled),
            int(labelled and label == predicted),
        )

    def _scored_rows(
        self, confidence: npt.NDArray[np.floating[Any]], predicted: npt.NDArray[np.integer[Any]], labels: Labels
    ) -> _Scored:
        """A batch, vectorized."""
        if confidence.size:
            low, high = float(confidence.min()), float(confidence.max())
            _check_score_range(low, high, int(predicted.min()), int(predicted.max()), self.layout.n_classes)
        index = _bin_index(self._confidence_edges, confidence, self._confidence_last)
        known = labels >= 0 if labels is not None else np.zeros(len(predicted), dtype=bool)
        values = confidence.astype(np.float64)
        return _Scored(
            _tally(index, self._confidence_last + 1),
            _tally(predicted.astype(np.intp), self.layout.n_classes),
            float(np.sum(values)),
            float(np.dot(values, values)),
            int(np.count_nonzero(known)),
            int(np.count_nonzero((predicted == labels) & known)),
        )

    def _check(
        self,
        features: npt.NDArray[np.floating[Any]],
        latency_ms: float | npt.NDArray[np.floating[Any]],
        labels: Labels,
        shadow: ShadowComparison | None,
        *,
        failed: bool,
    ) -> int:
        """Return the row count, or raise ``ValueError`` naming what cannot be counted."""
        if features.ndim != 2 or features.shape[1] != self._features.count:  # noqa: PLR2004 - [rows, F]
            msg = f"features must be [rows, {self._features.count}], got {list(features.shape)}"
            raise ValueError(msg)
        rows = int(features.shape[0])
        _check_latency(rows, latency_ms)
        for name, array in (("labels", labels), *_shadow_arrays(shadow)):
            if array is not None and array.shape != (rows,):
                msg = f"{name} must have one value per row ({rows}), got shape {list(array.shape)}"
                raise ValueError(msg)
        if shadow is not None and (self.identity.role != "shadow" or failed):
            msg = "shadow comparisons belong to answered inferences of a shadow-role summarizer"
            raise ValueError(msg)
        return rows

    def _summary(self, window: _Window) -> Summary:
        """The wire form of a closed window, with its id."""
        self._sequence += 1
        identity = self.identity
        shadow = (window.shadow or _Shadow()) if identity.active_version is not None else None
        return Summary(
            id=self._summary_id(window.start),
            model=identity.model,
            version=identity.version,
            role=identity.role,
            window_start=datetime.fromtimestamp(window.start, UTC),
            window_seconds=self.window_seconds,
            n=window.n,
            errors=window.errors,
            fallbacks=window.fallbacks,
            timeouts=window.timeouts,
            latency_counts=tuple((window.latency + _binned(window.row_latency)).tolist()),
            latency_sum_ms=window.latency_sum,
            confidence_counts=tuple((window.confidence + _binned(window.row_confidence)).tolist()),
            confidence_sum=window.confidence_sum,
            confidence_sum_sq=window.confidence_sum_sq,
            predicted_counts=tuple((window.predicted + window.row_predicted).tolist()),
            feature_counts=self._features.split(window.feature_rows, window.reached),
            n_labelled=window.n_labelled,
            n_correct=window.n_correct,
            shadow=shadow.stats(identity.active_version) if shadow and identity.active_version else None,
        )

    def _summary_id(self, start: int) -> str:
        """``sha256(model, version, role, start, length, sequence, salt)``, 32 hex digits."""
        identity = self.identity
        parts = (identity.model, identity.version, identity.role, start, self.window_seconds, self._sequence)
        digest = hashlib.sha256("\x00".join(str(part) for part in parts).encode() + b"\x00" + self._salt)
        return digest.hexdigest()[:_ID_HEX]


def _timestamp_of(clock: Clock) -> Callable[[], float]:
    """Read ``clock`` as a Unix timestamp."""
    return lambda: clock.now().timestamp()


def _shadow_arrays(shadow: ShadowComparison | None) -> tuple[tuple[str, npt.NDArray[Any] | None], ...]:
    if shadow is None:
        return ()
    return (("shadow.predicted", shadow.predicted), ("shadow.confidence", shadow.confidence))


def _check_score_range(low: float, high: float, lowest: int, highest: int, n_classes: int) -> None:
    """Confidence within [0, 1] (so never NaN) and classes within ``[0, n_classes)``."""
    if not (low >= 0.0 and high <= 1.0):
        msg = f"confidence must be within [0, 1], got values in [{low}, {high}]"
        raise ValueError(msg)
    if lowest < 0 or highest >= n_classes:
        msg = f"predicted classes must be within [0, {n_classes}), got values in [{lowest}, {highest}]"
        raise ValueError(msg)


def _check_latency(rows: int, latency_ms: float | npt.NDArray[np.floating[Any]]) -> None:
    """Latency is finite and non-negative: a number, or one value per row."""
    if not isinstance(latency_ms, np.ndarray):
        if not 0.0 <= latency_ms < math.inf:
            msg = f"latency_ms must be finite and >= 0, got {latency_ms}"
            raise ValueError(msg)
        return
    if latency_ms.shape != (rows,):
        msg = f"latency_ms must be a number or one value per row ({rows}), got shape {list(latency_ms.shape)}"
        raise ValueError(msg)
    if rows and not (float(latency_ms.min()) >= 0.0 and float(latency_ms.max()) < math.inf):
        msg = "latency_ms must be finite and >= 0"
        raise ValueError(msg)
