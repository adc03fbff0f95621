"""The drift monitor as scenarios: stable fleets, noisy windows, persistent drift, shares per tag, retrain, rollback."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from modelfleet.bundle import FeatureHistogram, Histogram, References
from modelfleet.rollout._drift import (
    CONFIDENCE,
    UNTAGGED,
    DriftPolicy,
    DriftScore,
    compare_with_parent,
    evaluate_drift,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
WINDOW = timedelta(minutes=5)

REFERENCES = References(
    n=1000,
    features=(
        FeatureHistogram(input="x", index=0, edges=(0.0, 1.0, 2.0, 3.0, 4.0), counts=(250, 250, 250, 250)),
        FeatureHistogram(input="x", index=1, edges=(0.0, 1.0, 2.0), counts=(500, 500)),
    ),
    confidence=Histogram(edges=(0.0, 0.5, 1.0), counts=(200, 800)),
)

# Live windows of 400 inferences, counted on the reference edges.
STABLE = ((100, 100, 100, 100), (200, 200))
NOISY = ((90, 110, 95, 105), (190, 210))  # sampling noise: PSI ~0.006
SHIFTED = ((25, 50, 150, 175), (200, 200))  # x[0] moves right: PSI ~0.50
CONF_STABLE = (80, 320)
CONF_LOW = (300, 100)  # the model is unsure of what it sees


@dataclass(frozen=True)
class Window:
    window_start: datetime
    n: int
    feature_counts: Sequence[Sequence[int]]
    confidence_counts: Sequence[int]


@dataclass(frozen=True)
class FleetDevice:
    device_id: str
    windows: Sequence[Window]
    tags: Mapping[str, str] = field(default_factory=dict)


def device(device_id, *features, confidence=None, tags=None, n=400):
    """A device whose i-th window has input counts ``features[i]`` (oldest first)."""
    confidences = confidence or [CONF_STABLE] * len(features)
    windows = [
        Window(T0 + i * WINDOW, n, counts, conf)
        for i, (counts, conf) in enumerate(zip(features, confidences, strict=True))
    ]
    return FleetDevice(device_id, windows, tags or {})


def fleet(stable, drifting, *, tags=None, prefix="dev"):
    """``stable`` devices with three stable windows and ``drifting`` with three shifted ones."""
    devices = [device(f"{prefix}-s{i:02d}", STABLE, NOISY, STABLE, tags=tags) for i in range(stable)]
    devices += [device(f"{prefix}-d{i:02d}", SHIFTED, SHIFTED, SHIFTED, tags=tags) for i in range(drifting)]
    return devices


def evaluate(devices, **policy):
    return evaluate_drift("digits", "1.1.0", REFERENCES, devices, DriftPolicy(**policy))


def test_a_stable_fleet_has_no_drifting_devices_and_no_retrain():
    result = evaluate(fleet(stable=10, drifting=0))
    assert (result.evaluated, result.drifting, result.share) == (10, 0, 0.0)
    assert not any(d.drifting for d in result.devices)
    assert result.decision.requested is False
    assert result.decision.top_features == ()


# name: windows oldest -> newest, expected drifting
PERSISTENCE = [
    ("one noisy window in the middle", (STABLE, SHIFTED, STABLE), False),
    ("one shifted window, the newest", (STABLE, STABLE, SHIFTED), False),
    ("two shifted windows of three", (STABLE, SHIFTED, SHIFTED), False),
    ("three shifted windows in a row", (SHIFTED, SHIFTED, SHIFTED), True),
    ("an old run that has ended", (SHIFTED, SHIFTED, SHIFTED, STABLE), False),
    ("a run that began after stable windows", (STABLE, STABLE, SHIFTED, SHIFTED, SHIFTED), True),
]


@pytest.mark.parametrize(("windows", "drifting"), [case[1:] for case in PERSISTENCE], ids=[c[0] for c in PERSISTENCE])
def test_only_k_windows_in_a_row_above_the_threshold_make_a_device_drift(windows, drifting):
    result = evaluate([device("dev-1", *windows)])
    verdict = result.devices[0]
    assert verdict.evaluated is True
    assert verdict.drifting is drifting
    assert verdict.drifting_features == (("x[0]",) if drifting else ())


def test_k_is_the_policy_s_windows():
    result = evaluate([device("dev-1", STABLE, SHIFTED, SHIFTED)], windows=2)
    assert result.devices[0].drifting is True


def test_confidence_alone_can_make_a_device_drift():
    low = device("dev-1", STABLE, STABLE, STABLE, confidence=[CONF_LOW] * 3)
    verdict = evaluate([low]).devices[0]
    assert verdict.drifting is True
    assert verdict.drifting_features == (CONFIDENCE,)


def test_thin_windows_are_not_scored_and_such_devices_are_left_out_of_the_share():
    thin = device("dev-thin", SHIFTED, SHIFTED, SHIFTED, n=50)
    young = device("dev-young", SHIFTED, SHIFTED)  # only two windows so far
    result = evaluate([thin, young, *fleet(stable=4, drifting=1)])
    by_id = {d.device_id: d for d in result.devices}
    assert (by_id["dev-thin"].evaluated, by_id["dev-thin"].drifting) == (False, False)
    assert (by_id["dev-young"].evaluated, by_id["dev-young"].drifting) == (False, False)
    assert (result.evaluated, result.drifting, result.share) == (5, 1, 0.2)
    assert result.device_scores("dev-thin")[0].score is None


def test_counts_that_do_not_fit_the_reference_score_nothing_instead_of_failing():
    wrong = device("dev-1", ((1, 2, 3), (4,)), ((1, 2, 3), (4,)), ((1, 2, 3), (4,)))
    result = evaluate([wrong])
    assert result.devices[0].drifting is False
    scores = {s.feature: s.score for s in result.device_scores("dev-1")}
    assert scores["x[0]"] is None
    assert scores["x[1]"] is None
    assert scores[CONFIDENCE] == pytest.approx(0.0)


def test_the_share_is_broken_down_by_the_policy_s_tag():
    north = fleet(stable=0, drifting=4, tags={"site": "north"}, prefix="n")
    south = fleet(stable=6, drifting=0, tags={"site": "south"}, prefix="s")
    untagged = fleet(stable=2, drifting=0, prefix="u")
    result = evaluate([*north, *south, *untagged])
    shares = [(g.group, g.devices, g.drifting, g.share) for g in result.groups]
    assert shares == [(UNTAGGED, 2, 0, 0.0), ("north", 4, 4, 1.0), ("south", 6, 0, 0.0)]
    assert result.share == pytest.approx(4 / 12)
    by_line = evaluate([*north, *south], group_by="line")
    assert [g.group for g in by_line.groups] == [UNTAGGED]
    assert evaluate([*north, *south], group_by=None).groups == ()


# drifting devices, stable devices, retrain_share, requested
RETRAIN = [
    ("one of ten is below a fifth", 1, 9, 0.2, False),
    ("two of ten reach a fifth", 2, 8, 0.2, True),
    ("two of ten stay below a quarter", 2, 8, 0.25, False),
    ("four of four are too few devices to judge", 4, 0, 0.2, False),
]


@pytest.mark.parametrize(
    ("drifting", "stable", "share", "requested"), [c[1:] for c in RETRAIN], ids=[c[0] for c in RETRAIN]
)
def test_retraining_is_requested_at_the_configured_share_over_enough_devices(drifting, stable, share, requested):
    result = evaluate(fleet(stable=stable, drifting=drifting), retrain_share=share)
    assert result.decision.requested is requested
    assert result.decision.drifting_devices == drifting


def test_the_retrain_evidence_names_the_drifting_features_devices_groups_and_windows():
    devices = [*fleet(stable=3, drifting=2, tags={"site": "a"}), *fleet(stable=5, drifting=0, tags={"site": "b"})]
    evidence = evaluate(devices).decision.evidence()
    json.dumps(evidence, allow_nan=False)  # goes to the audit log and a webhook as is
    assert evidence["requested"] is True
    assert (evidence["model"], evidence["version"]) == ("digits", "1.1.0")
    assert (evidence["devices"], evidence["drifting_devices"], evidence["share"]) == (10, 2, 0.2)
    assert [f["feature"] for f in evidence["top_features"]] == ["x[0]"]
    assert evidence["top_features"][0]["drifting_devices"] == 2
    assert {g["group"]: g["drifting"] for g in evidence["groups"]} == {"a": 2, "b": 0}
    assert (evidence["window_start"], evidence["window_end"]) == (T0.isoformat(), (T0 + 2 * WINDOW).isoformat())
    assert (evidence["metric"], evidence["threshold"], evidence["windows"]) == ("psi", 0.2, 3)


def test_device_scores_give_one_drift_score_per_feature_and_window():
    result = evaluate([device("dev-1", STABLE, SHIFTED, SHIFTED)])
    latest = result.device_scores("dev-1")
    assert [s.feature for s in latest] == ["x[0]", "x[1]", CONFIDENCE]
    assert all(isinstance(s, DriftScore) and s.window_start == T0 + 2 * WINDOW for s in latest)
    assert latest[0].above is True
    assert latest[0].score == pytest.approx(0.5016, abs=1e-3)
    assert latest[1].above is False
    every = result.device_scores("dev-1", latest_only=False)
    assert len(every) == 9
    assert [s.above for s in every if s.feature == "x[0]"] == [False, True, True]
    with pytest.raises(KeyError):
        result.device_scores("dev-unknown")


@pytest.mark.parametrize("metric", ["psi", "kl", "js", "ks"])
def test_every_metric_separates_a_shift_from_noise_at_its_default_threshold(metric):
    result = evaluate(fleet(stable=5, drifting=2), metric=metric)
    assert sorted(d.device_id for d in result.devices if d.drifting) == ["dev-d00", "dev-d01"]


@pytest.mark.parametrize(
    "bad",
    [
        {"metric": "wasserstein"},
        {"threshold": 0.0},
        {"threshold": float("nan")},
        {"windows": 0},
        {"min_inferences": 0},
        {"retrain_share": 0.0},
        {"retrain_share": 1.5},
        {"min_devices": 1},
        {"rollback_alpha": 0.5},
    ],
)
def test_a_policy_out_of_bounds_is_refused(bad):
    with pytest.raises(ValueError, match="must"):
        DriftPolicy(**bad)


def test_the_default_threshold_follows_the_metric():
    assert DriftPolicy().limit == 0.2
    assert DriftPolicy(metric="js").limit == 0.1
    assert DriftPolicy(metric="js", threshold=0.3).limit == 0.3


def test_an_empty_fleet_evaluates_to_nothing():
    result = evaluate([])
    assert (result.evaluated, result.share, result.decision.requested) == (0, 0.0, False)
    assert result.decision.window_start is None


# candidate (stable, drifting), parent (stable, drifting), rollback recommended
VERSUS_PARENT = [
    ("drifts where the parent does not", (35, 15), (50, 0), True),
    ("drifts as much as the parent", (44, 6), (45, 5), False),
    ("a small excess within the margin", (47, 3), (50, 0), False),
    ("too few devices on the parent", (35, 15), (3, 0), False),
]


@pytest.mark.parametrize(
    ("candidate", "parent", "recommended"), [c[1:] for c in VERSUS_PARENT], ids=[c[0] for c in VERSUS_PARENT]
)
def test_a_version_that_drifts_where_its_parent_did_not_is_recommended_for_rollback(candidate, parent, recommended):
    new = evaluate(fleet(*candidate, prefix="new"))
    old = evaluate_drift("digits", "1.0.0", REFERENCES, fleet(*parent, prefix="old"), DriftPolicy())
    comparison = compare_with_parent(new, old)
    assert comparison.rollback_recommended is recommended
    assert (comparison.version, comparison.parent) == ("1.1.0", "1.0.0")
    json.dumps(comparison.evidence(), allow_nan=False)


def test_the_comparison_with_the_parent_only_counts_tags_both_versions_run_on():
    aging_site = fleet(stable=0, drifting=20, tags={"site": "old-sensors"}, prefix="x")
    shared_new = fleet(stable=30, drifting=0, tags={"site": "plant"}, prefix="n")
    shared_old = fleet(stable=30, drifting=0, tags={"site": "plant"}, prefix="o")
    new = evaluate([*aging_site, *shared_new])
    old = evaluate_drift("digits", "1.0.0", REFERENCES, shared_old, DriftPolicy())
    comparison = compare_with_parent(new, old)
    assert (comparison.devices, comparison.share) == (30, 0.0)
    assert comparison.rollback_recommended is False
    untagged = compare_with_parent(evaluate([*aging_site, *shared_new], group_by=None), old)
    assert (untagged.devices, untagged.rollback_recommended) == (50, True)
