"""Summary storage: one statement per batch, duplicates skipped even within a batch, sums per cohort."""

from datetime import UTC, datetime

from modelfleet.store import aggregate_windows, insert_summaries
from modelfleet.telemetry import Summary

W0 = datetime(2026, 1, 1, tzinfo=UTC)


def summary(summary_id, n=4, version="1.0.0"):
    return Summary(
        id=summary_id, model="m", version=version, window_start=W0, window_seconds=60, n=n, latency_counts=(),
        latency_sum_ms=1.0, confidence_counts=(n,), confidence_sum=0.5 * n, confidence_sum_sq=0.25 * n,
        predicted_counts=(), feature_counts=(),
    )  # fmt: skip


def test_a_repeated_id_within_one_batch_is_stored_once(engine):
    with engine.begin() as connection:
        new = insert_summaries(connection, "d1", [summary("summary-01"), summary("summary-01")], cohort=None, now=W0)
    assert new == 1


def test_sums_are_kept_apart_per_cohort(engine):
    with engine.begin() as connection:
        insert_summaries(connection, "d1", [summary("summary-01", n=3)], cohort="canary", now=W0)
        insert_summaries(connection, "d2", [summary("summary-02", n=5)], cohort="holdout", now=W0)
        insert_summaries(connection, "d3", [summary("summary-03", n=7)], cohort="holdout", now=W0)
        rows = aggregate_windows(connection, model="m")
    assert sorted((r.cohort, r.devices, r.n, r.n_scored, r.confidence_sum) for r in rows) == [
        ("canary", 1, 3, 3, 1.5),
        ("holdout", 2, 12, 12, 6.0),
    ]
