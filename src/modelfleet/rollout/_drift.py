"""Drift monitor of one model version: per-device scores, persistence, fleet share, retrain and rollback advice.

Pure (shared/DESIGN.md §2, §8): it takes the version's signed reference
histograms and, per device, its last windows of telemetry counts (oldest
first), and returns a :class:`FleetDrift`; the caller reads the store and acts.

- Every window with at least ``min_inferences`` inferences gets one score per
  input feature and one for top-1 confidence (PSI, KL, JS or binned KS against
  the reference on the same edges). Thinner windows, and counts whose shape
  does not match the reference, score nothing, which breaks a run.
- A device drifts on a feature when its last ``windows`` (K) scores are all
  above the threshold (:func:`modelfleet.stats.persistent_drift`), so one noisy
  window never counts; it drifts when any feature or confidence does.
- Only devices whose last K windows all carry enough inferences are evaluated;
  the fleet share and the per-tag shares are over those devices.
- Retraining is requested when at least ``min_devices`` are evaluated and the
  share of drifting devices is at or above ``retrain_share``.
- :func:`compare_with_parent` asks whether a version drifts where its parent
  does not: a one-sided device-level two-proportion test of the drifting
  shares against a margin, at ``rollback_alpha``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from modelfleet.bundle import References
from modelfleet.stats import (
    DriftShare,
    binned_ks_distance,
    difference_in_proportions,
    drift_share_by_group,
    jensen_shannon_distance,
    kl_divergence,
    persistent_drift,
    population_stability_index,
)

__all__ = [
    "CONFIDENCE",
    "DEFAULT_THRESHOLDS",
    "UNTAGGED",
    "DeviceDrift",
    "DeviceWindows",
    "DriftMetric",
    "DriftPolicy",
    "DriftScore",
    "FeatureDrift",
    "FleetDrift",
    "RetrainDecision",
    "VersionComparison",
    "WindowCounts",
    "compare_with_parent",
    "evaluate_drift",
    "feature_names",
]

DriftMetric = Literal["psi", "kl", "js", "ks"]
DEFAULT_THRESHOLDS: Mapping[DriftMetric, float] = {"psi": 0.2, "kl": 0.1, "js": 0.1, "ks": 0.1}
"""PSI 0.2 is the usual "significant shift" line; KL ≈ PSI/2 (PSI is the symmetrised KL); 0.1 for JS and KS."""
CONFIDENCE = "confidence"
"""The name top-1 confidence is scored under, next to the input features."""
UNTAGGED = "(untagged)"
"""The group of devices that lack the policy's ``group_by`` tag."""

_METRICS: Mapping[DriftMetric, Callable[[ArrayLike, ArrayLike], NDArray[np.float64]]] = {
    "psi": population_stability_index,
    "kl": kl_divergence,
    "js": jensen_shannon_distance,
    "ks": binned_ks_distance,
}


@dataclass(frozen=True, slots=True)
class DriftPolicy:
    """When a device counts as drifting and when the fleet needs a new model.

    Attributes:
        metric: the distance between live and reference histograms.
        threshold: a window is above when its score is strictly greater; None takes :data:`DEFAULT_THRESHOLDS`.
        windows: K, consecutive windows above the threshold before a device counts as drifting.
        min_inferences: a window with fewer inferences is not scored.
        retrain_share: the fleet share of drifting devices at which retraining is requested.
        min_devices: evaluated devices needed before a share (or a comparison arm) means anything.
        group_by: the device tag shares are broken down by (None: no breakdown).
        top_features: how many of the most drifting features the evidence names.
        rollback_alpha: error rate of "this version drifts more than its parent".
        rollback_margin: how much larger the version's drifting share must be than its parent's.
    """

    metric: DriftMetric = "psi"
    threshold: float | None = None
    windows: int = 3
    min_inferences: int = 100
    retrain_share: float = 0.2
    min_devices: int = 5
    group_by: str | None = "site"
    top_features: int = 5
    rollback_alpha: float = 0.01
    rollback_margin: float = 0.05

    def __post_init__(self) -> None:
        checks = {
            "metric must be one of psi, kl, js, ks": self.metric in _METRICS,
            "threshold must be positive and finite": self.threshold is None
            or (math.isfinite(self.threshold) and self.threshold > 0),
            "windows must be between 1 and 100": 1 <= self.windows <= 100,  # noqa: PLR2004 - documented bound
            "min_inferences must be at least 1": self.min_inferences >= 1,
            "retrain_share must lie in (0, 1]": 0 < self.retrain_share <= 1,
            "min_devices must be at least 2": self.min_devices >= 2,  # noqa: PLR2004 - a variance needs two devices
            "top_features must be at least 1": self.top_features >= 1,
            "rollback_alpha must lie in (0, 0.5)": 0 < self.rollback_alpha < 0.5,  # noqa: PLR2004 - one-sided test
            "rollback_margin must lie in [0, 1)": 0 <= self.rollback_margin < 1,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)

    @property
    def limit(self) -> float:
        """The threshold in effect for :attr:`metric`."""
        return DEFAULT_THRESHOLDS[self.metric] if self.threshold is None else self.threshold


class WindowCounts(Protocol):
    """One device's telemetry counts for one window of one model version."""

    @property
    def window_start(self) -> datetime:
        """When the window began."""
        ...

    @property
    def n(self) -> int:
        """Inferences in the window."""
        ...

    @property
    def feature_counts(self) -> Sequence[Sequence[int]]:
        """Per input feature, counts on the reference edges (manifest order)."""
        ...

    @property
    def confidence_counts(self) -> Sequence[int]:
        """Top-1 confidence counts on the reference edges."""
        ...


class DeviceWindows(Protocol):
    """One device: its tags and its recent windows, oldest first."""

    @property
    def device_id(self) -> str:
        """The device."""
        ...

    @property
    def tags(self) -> Mapping[str, Any]:
        """The device's admin tags."""
        ...

    @property
    def windows(self) -> Sequence[WindowCounts]:
        """Its recent windows, oldest first."""
        ...


@dataclass(frozen=True, slots=True)
class DriftScore:
    """The distance of one device's window from the reference, for one feature or for confidence.

    Attributes:
        device_id: the device.
        window_start: the window.
        feature: ``input[index]`` of an input feature, or :data:`CONFIDENCE`.
        metric: the distance used.
        score: the distance, or None when the window was not scored (too few inferences, wrong shape).
        above: whether the score exceeds the threshold.
    """

    device_id: str
    window_start: datetime
    feature: str
    metric: DriftMetric
    score: float | None
    above: bool


@dataclass(frozen=True, slots=True)
class DeviceDrift:
    """One device's verdict over its last K windows.

    Attributes:
        device_id: the device.
        group: its value of the policy's ``group_by`` tag (:data:`UNTAGGED` when absent).
        windows: window starts considered, oldest first (at most K).
        evaluated: its last K windows all carried enough inferences, so it counts in the shares.
        drifting: evaluated, and some feature or confidence stayed above the threshold for K windows.
        drifting_features: the features (and :data:`CONFIDENCE`) that did.
    """

    device_id: str
    group: str
    windows: tuple[datetime, ...]
    evaluated: bool
    drifting: bool
    drifting_features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """How one feature (or confidence) drifts across the evaluated devices.

    Attributes:
        feature: ``input[index]`` or :data:`CONFIDENCE`.
        drifting_devices: evaluated devices drifting on it.
        mean_score: mean latest-window score over evaluated devices (None when none was scored).
    """

    feature: str
    drifting_devices: int
    mean_score: float | None


@dataclass(frozen=True, slots=True)
class RetrainDecision:
    """Whether the fleet's drift calls for a new model, with the evidence a trainer needs.

    Attributes:
        requested: the share reached the policy's ``retrain_share`` over enough devices.
        reason: why or why not, in words.
        model: the model name.
        version: the version evaluated.
        share: drifting / evaluated devices (0 when none was evaluated).
        drifting_devices: evaluated devices that drift.
        devices: evaluated devices.
        groups: the shares per tag value.
        top_features: the most drifting features, most devices first.
        window_start: the oldest window considered.
        window_end: the newest window considered.
        metric: the distance used.
        threshold: its threshold.
        windows: K.
    """

    requested: bool
    reason: str
    model: str
    version: str
    share: float
    drifting_devices: int
    devices: int
    groups: tuple[DriftShare, ...]
    top_features: tuple[FeatureDrift, ...]
    window_start: datetime | None
    window_end: datetime | None
    metric: DriftMetric
    threshold: float
    windows: int

    def evidence(self) -> dict[str, Any]:
        """The decision as plain JSON values (for the audit log and the ``retrain.requested`` event)."""
        return {
            "model": self.model,
            "version": self.version,
            "requested": self.requested,
            "reason": self.reason,
            "share": self.share,
            "drifting_devices": self.drifting_devices,
            "devices": self.devices,
            "groups": [
                {"group": g.group, "devices": g.devices, "drifting": g.drifting, "share": g.share} for g in self.groups
            ],
            "top_features": [
                {"feature": f.feature, "drifting_devices": f.drifting_devices, "mean_score": f.mean_score}
                for f in self.top_features
            ],
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "metric": self.metric,
            "threshold": self.threshold,
            "windows": self.windows,
        }


@dataclass(frozen=True, slots=True, eq=False)
class FleetDrift:
    """The monitor's result for one model version.

    Attributes:
        model: the model name.
        version: the version.
        policy: the policy applied.
        features: score columns: every input feature (manifest order), then :data:`CONFIDENCE`.
        devices: one verdict per device, in input order.
        scores: ``[devices, K, features]`` scores, NaN where not scored; the last window is ``[:, -1]``.
        window_starts: ``[devices][K]`` the window each score row belongs to (None for padding).
        groups: the shares per tag value over evaluated devices.
        feature_drift: per feature, drifting devices and mean latest score.
        decision: the retrain decision.
    """

    model: str
    version: str
    policy: DriftPolicy
    features: tuple[str, ...]
    devices: tuple[DeviceDrift, ...]
    scores: NDArray[np.float64] = field(repr=False)
    window_starts: tuple[tuple[datetime | None, ...], ...] = field(repr=False)
    groups: tuple[DriftShare, ...]
    feature_drift: tuple[FeatureDrift, ...]
    decision: RetrainDecision

    @property
    def evaluated(self) -> int:
        """Devices that count in the shares."""
        return self.decision.devices

    @property
    def drifting(self) -> int:
        """Evaluated devices that drift."""
        return self.decision.drifting_devices

    @property
    def share(self) -> float:
        """Drifting / evaluated devices."""
        return self.decision.share

    def device_scores(self, device_id: str, *, latest_only: bool = True) -> tuple[DriftScore, ...]:
        """The :class:`DriftScore` of one device per feature, for its latest window or for all K.

        Raises:
            KeyError: the device is not in this result.
        """
        index = next((i for i, d in enumerate(self.devices) if d.device_id == device_id), None)
        if index is None:
            raise KeyError(device_id)
        limit = self.policy.limit
        columns = [self.policy.windows - 1] if latest_only else range(self.policy.windows)
        result: list[DriftScore] = []
        for k in columns:
            start = self.window_starts[index][k]
            if start is None:
                continue
            for f, name in enumerate(self.features):
                value = float(self.scores[index, k, f])
                score = value if math.isfinite(value) else None
                above = score is not None and score > limit
                result.append(DriftScore(device_id, start, name, self.policy.metric, score, above))
        return tuple(result)


@dataclass(frozen=True, slots=True)
class VersionComparison:
    """Does a version drift where its parent, over the same period and tags, does not?

    Attributes:
        model: the model name.
        version: the version under suspicion.
        parent: its parent version.
        share: the version's drifting share over the compared devices.
        parent_share: the parent's.
        devices: the version's compared devices.
        parent_devices: the parent's.
        difference: ``share - parent_share`` (None when a side had too few devices).
        p_value: one-sided p-value of "the difference exceeds the margin" being false.
        rollback_recommended: the difference exceeds the margin at the policy's alpha.
        reason: why or why not, in words.
    """

    model: str
    version: str
    parent: str
    share: float
    parent_share: float
    devices: int
    parent_devices: int
    difference: float | None
    p_value: float | None
    rollback_recommended: bool
    reason: str

    def evidence(self) -> dict[str, Any]:
        """The comparison as plain JSON values."""
        return {
            "version": self.version,
            "parent": self.parent,
            "share": self.share,
            "parent_share": self.parent_share,
            "devices": self.devices,
            "parent_devices": self.parent_devices,
            "difference": self.difference,
            "p_value": self.p_value,
            "rollback_recommended": self.rollback_recommended,
            "reason": self.reason,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def feature_names(references: References) -> tuple[str, ...]:
    """The score columns of a version: ``input[index]`` per reference feature, then :data:`CONFIDENCE`."""
    return (*(f"{h.input}[{h.index}]" for h in references.features), CONFIDENCE)


@dataclass(frozen=True, slots=True)
class _Window:
    """Two summaries of one window (an agent restarted mid-window) added up."""

    window_start: datetime
    n: int
    feature_counts: tuple[tuple[int, ...], ...]
    confidence_counts: tuple[int, ...]


def _add(counts: Sequence[int], more: Sequence[int]) -> tuple[int, ...]:
    return tuple(a + b for a, b in zip(counts, more, strict=True)) if len(counts) == len(more) else ()


def _merge(a: WindowCounts, b: WindowCounts) -> WindowCounts:
    """Add up two summaries of the same window; counts whose shapes differ score nothing."""
    same = len(a.feature_counts) == len(b.feature_counts)
    features = tuple(_add(x, y) for x, y in zip(a.feature_counts, b.feature_counts, strict=True)) if same else ()
    return _Window(a.window_start, a.n + b.n, features, _add(a.confidence_counts, b.confidence_counts))


def _last_windows(device: DeviceWindows, k: int) -> list[WindowCounts | None]:
    """The device's last ``k`` distinct windows, oldest first, left-padded with None."""
    by_start: dict[datetime, WindowCounts] = {}
    for window in device.windows:
        seen = by_start.get(window.window_start)
        by_start[window.window_start] = window if seen is None else _merge(seen, window)
    chosen: list[WindowCounts | None] = [by_start[s] for s in sorted(by_start)[-k:]]
    return [None] * (k - len(chosen)) + chosen


def _fill(live: NDArray[np.float64], fits: NDArray[np.bool_], window: WindowCounts, lengths: Sequence[int]) -> None:
    """Copy one window's counts into its row of ``live``; mark which columns fit the reference's bins."""
    columns = [*window.feature_counts, window.confidence_counts]
    if [len(c) for c in columns] == list(lengths):  # the usual case: one copy of the whole row
        live[:] = np.fromiter(itertools.chain.from_iterable(columns), dtype=np.float64, count=live.size)
        fits[:] = True
        return
    offset = 0
    confidence = len(lengths) - 1
    for index, bins in enumerate(lengths):
        counts = window.confidence_counts if index == confidence else _feature(window, index)
        if counts is not None and len(counts) == bins:
            live[offset : offset + bins] = counts
            fits[index] = True
        offset += bins


def _feature(window: WindowCounts, index: int) -> Sequence[int] | None:
    return window.feature_counts[index] if index < len(window.feature_counts) else None


def _score_grid(
    metric: Callable[[ArrayLike, ArrayLike], NDArray[np.float64]],
    references: Sequence[Sequence[int]],
    grid: Sequence[Sequence[WindowCounts | None]],
    scored: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """Scores ``[devices, K, columns]``; NaN where unscored, empty, or the counts do not fit the reference."""
    lengths = [len(r) for r in references]
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    devices, k = scored.shape
    live = np.zeros((devices, k, int(offsets[-1])), dtype=np.float64)
    fits = np.zeros((devices, k, len(lengths)), dtype=np.bool_)
    for d, row in enumerate(grid):
        for w, window in enumerate(row):
            if window is not None and scored[d, w]:
                _fill(live[d, w], fits[d, w], window, lengths)
    scores = np.full((devices, k, len(lengths)), np.nan)
    for c, reference in enumerate(references):
        if sum(reference) == 0 or not fits[..., c].any():
            continue
        block = live[..., offsets[c] : offsets[c + 1]].reshape(devices * k, lengths[c])
        with np.errstate(all="ignore"):  # an empty live histogram scores NaN, which is what "not scored" means
            values = metric(np.asarray(reference, dtype=np.float64), block).reshape(devices, k)
        scores[..., c] = np.where(fits[..., c], values, np.nan)
    return scores


def _group(device: DeviceWindows, group_by: str | None) -> str:
    if group_by is None:
        return ""
    value = device.tags.get(group_by)
    return UNTAGGED if value is None else str(value)


def evaluate_drift(
    model: str,
    version: str,
    references: References,
    devices: Sequence[DeviceWindows],
    policy: DriftPolicy | None = None,
) -> FleetDrift:
    """Score every device against the version's references and decide whether the fleet needs retraining.

    Args:
        model: the model name (for the evidence).
        version: the version the summaries were produced by.
        references: the version's reference histograms (``manifest.evidence.references``).
        devices: each device's tags and recent windows, oldest first; only the last K are used.
        policy: thresholds and bounds (default :class:`DriftPolicy`).
    """
    policy = policy or DriftPolicy()
    k = policy.windows
    names = feature_names(references)
    refs: list[Sequence[int]] = [*(h.counts for h in references.features), references.confidence.counts]
    grid = [_last_windows(device, k) for device in devices]
    scored = np.array(
        [[w is not None and w.n >= policy.min_inferences for w in row] for row in grid], dtype=np.bool_
    ).reshape(len(devices), k)
    scores = _score_grid(_METRICS[policy.metric], refs, grid, scored)
    persistent = (
        persistent_drift(np.moveaxis(scores, 1, -1), policy.limit, k)[..., -1]
        if devices
        else np.zeros((0, len(names)), dtype=np.bool_)
    )
    evaluated: NDArray[np.bool_] = np.asarray(scored.all(axis=1), dtype=np.bool_)
    persistent &= evaluated[:, None]
    drifting: NDArray[np.bool_] = np.asarray(persistent.any(axis=1), dtype=np.bool_)
    verdicts = tuple(
        DeviceDrift(
            device_id=device.device_id,
            group=_group(device, policy.group_by),
            windows=tuple(w.window_start for w in row if w is not None),
            evaluated=bool(evaluated[d]),
            drifting=bool(drifting[d]),
            drifting_features=tuple(name for f, name in enumerate(names) if persistent[d, f]),
        )
        for d, (device, row) in enumerate(zip(devices, grid, strict=True))
    )
    groups = _groups(verdicts, policy)
    feature_drift = _feature_drift(names, scores, persistent, evaluated)
    decision = _decide(model, version, policy=policy, verdicts=verdicts, groups=groups, feature_drift=feature_drift)
    starts = tuple(tuple(None if w is None else w.window_start for w in row) for row in grid)
    return FleetDrift(
        model=model,
        version=version,
        policy=policy,
        features=names,
        devices=verdicts,
        scores=scores,
        window_starts=starts,
        groups=groups,
        feature_drift=feature_drift,
        decision=decision,
    )


def _groups(verdicts: Sequence[DeviceDrift], policy: DriftPolicy) -> tuple[DriftShare, ...]:
    counted = [v for v in verdicts if v.evaluated]
    if policy.group_by is None or not counted:
        return ()
    return drift_share_by_group([v.drifting for v in counted], [v.group for v in counted])


def _feature_drift(
    names: Sequence[str], scores: NDArray[np.float64], persistent: NDArray[np.bool_], evaluated: NDArray[np.bool_]
) -> tuple[FeatureDrift, ...]:
    latest = scores[evaluated, -1, :]
    result: list[FeatureDrift] = []
    for f, name in enumerate(names):
        column = latest[:, f]
        column = column[np.isfinite(column)]
        mean = float(column.mean()) if column.size else None
        result.append(FeatureDrift(name, int(persistent[:, f].sum()), mean))
    return tuple(result)


def _top(feature_drift: Sequence[FeatureDrift], count: int) -> tuple[FeatureDrift, ...]:
    drifting = [f for f in feature_drift if f.drifting_devices > 0]
    drifting.sort(key=lambda f: (-f.drifting_devices, -(f.mean_score or 0.0), f.feature))
    return tuple(drifting[:count])


def _decide(
    model: str,
    version: str,
    *,
    policy: DriftPolicy,
    verdicts: Sequence[DeviceDrift],
    groups: tuple[DriftShare, ...],
    feature_drift: Sequence[FeatureDrift],
) -> RetrainDecision:
    counted = [v for v in verdicts if v.evaluated]
    hits = sum(v.drifting for v in counted)
    share = hits / len(counted) if counted else 0.0
    if len(counted) < policy.min_devices:
        requested = False
        reason = f"{len(counted)} devices evaluated, fewer than the {policy.min_devices} a share needs"
    else:
        requested = share >= policy.retrain_share
        relation = "at or above" if requested else "below"
        reason = (
            f"{hits} of {len(counted)} devices drifting ({share:.1%}), {relation} the retrain share"
            f" {policy.retrain_share:.1%}"
        )
    considered = [start for v in counted for start in v.windows] or [s for v in verdicts for s in v.windows]
    return RetrainDecision(
        requested=requested,
        reason=reason,
        model=model,
        version=version,
        share=share,
        drifting_devices=hits,
        devices=len(counted),
        groups=groups,
        top_features=_top(feature_drift, policy.top_features),
        window_start=min(considered, default=None),
        window_end=max(considered, default=None),
        metric=policy.metric,
        threshold=policy.limit,
        windows=policy.windows,
    )


def _flags(result: FleetDrift, groups: set[str] | None) -> list[float]:
    return [float(v.drifting) for v in result.devices if v.evaluated and (groups is None or v.group in groups)]


def compare_with_parent(candidate: FleetDrift, parent: FleetDrift) -> VersionComparison:
    """Decide whether ``candidate`` drifts significantly more than ``parent`` (rollback recommended).

    Both results should cover the same period. With a ``group_by`` tag only the
    tag values both versions run on are compared, so a version deployed to the
    one site whose sensors age is not blamed for the site. The test is one-sided
    on device-level drifting flags: H0 ``share - parent_share <= margin``,
    rejected at ``rollback_alpha`` (normal approximation with the between-device
    standard error of :func:`modelfleet.stats.difference_in_proportions`).
    """
    policy = candidate.policy
    shared: set[str] | None = None
    if policy.group_by is not None:
        shared = {v.group for v in candidate.devices if v.evaluated} & {v.group for v in parent.devices if v.evaluated}
    mine, theirs = _flags(candidate, shared), _flags(parent, shared)
    share = sum(mine) / len(mine) if mine else 0.0
    parent_share = sum(theirs) / len(theirs) if theirs else 0.0

    def verdict(difference: float | None, p_value: float | None, recommended: bool, reason: str) -> VersionComparison:
        return VersionComparison(
            model=candidate.model,
            version=candidate.version,
            parent=parent.version,
            share=share,
            parent_share=parent_share,
            devices=len(mine),
            parent_devices=len(theirs),
            difference=difference,
            p_value=p_value,
            rollback_recommended=recommended,
            reason=reason,
        )

    if min(len(mine), len(theirs)) < policy.min_devices:
        reason = (
            f"{len(mine)} and {len(theirs)} comparable devices; each side needs {policy.min_devices}"
            " (same period and tags)"
        )
        return verdict(None, None, recommended=False, reason=reason)
    estimate = difference_in_proportions(mine, theirs)
    excess = estimate.estimate - policy.rollback_margin
    if estimate.standard_error > 0:
        p_value = 0.5 * math.erfc(excess / estimate.standard_error / math.sqrt(2.0))
    else:
        p_value = 0.0 if excess > 0 else 1.0
    recommended = p_value < policy.rollback_alpha
    relation = "significantly more than" if recommended else "not significantly more than"
    reason = (
        f"{share:.1%} of {len(mine)} devices drift on {candidate.version} vs {parent_share:.1%} of {len(theirs)}"
        f" on {parent.version}: {relation} the margin {policy.rollback_margin:.1%}"
        f" (one-sided p={p_value:.3g}, alpha {policy.rollback_alpha})"
    )
    return verdict(estimate.estimate, p_value, recommended=recommended, reason=reason)
