"""The deltas table: a delta is requested once, claimed by one builder, taken over when its builder died."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from modelfleet.store import (
    BundleRow,
    ModelRow,
    claim_delta,
    delivery_totals,
    delta_by_sha256,
    find_deltas,
    finish_delta,
    insert_events,
    request_delta,
    write_transaction,
)
from modelfleet.telemetry import Event

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BASE, TARGET, BLOB = "a" * 64, "b" * 64, "c" * 64
KEY = (BASE, TARGET, 2)


def test_a_pair_is_requested_once(engine):
    with write_transaction(engine) as connection:
        assert request_delta(connection, KEY, 1000, T0)
        assert not request_delta(connection, KEY, 1000, T0 + timedelta(seconds=1))
        record = find_deltas(connection, [KEY, ("d" * 64, TARGET, 2), (BASE, TARGET, 1)])
    assert list(record) == [KEY]
    assert record[KEY].status == "requested"
    assert record[KEY].target_size == 1000


def test_each_format_of_a_pair_is_its_own_delta(engine):
    format_1 = (BASE, TARGET, 1)
    with write_transaction(engine) as connection:
        assert request_delta(connection, KEY, 1000, T0)
        assert request_delta(connection, format_1, 1000, T0)
        assert claim_delta(connection, format_1, T0, stale_before=T0)
        finish_delta(connection, format_1, status="ready", now=T0, sha256=BLOB, size=99, codec="tensor")
        found = find_deltas(connection, [KEY, format_1])
    assert {key: record.status for key, record in found.items()} == {KEY: "requested", format_1: "ready"}


def test_only_one_builder_claims_a_pair(engine):
    with write_transaction(engine) as connection:
        request_delta(connection, KEY, 1000, T0)
        first = claim_delta(connection, KEY, T0, stale_before=T0 - timedelta(minutes=10))
        second = claim_delta(connection, KEY, T0, stale_before=T0 - timedelta(minutes=10))
    assert (first, second) == (True, False)


def test_a_claim_whose_builder_died_is_taken_over(engine):
    with write_transaction(engine) as connection:
        request_delta(connection, KEY, 1000, T0)
        claim_delta(connection, KEY, T0, stale_before=T0 - timedelta(minutes=10))
        later = T0 + timedelta(minutes=11)
        assert claim_delta(connection, KEY, later, stale_before=later - timedelta(minutes=10))


def test_a_finished_pair_is_not_claimed_again_and_ready_blobs_are_found_by_sha(engine):
    with write_transaction(engine) as connection:
        request_delta(connection, KEY, 1000, T0)
        claim_delta(connection, KEY, T0, stale_before=T0)
        finish_delta(connection, KEY, status="ready", now=T0, sha256=BLOB, size=99, codec="tensor")
        later = T0 + timedelta(days=1)
        assert not claim_delta(connection, KEY, later, stale_before=later)
        found = delta_by_sha256(connection, BLOB)
    assert [(d.base_sha256, d.target_sha256, d.format_version, d.size, d.codec) for d in found] == [
        (BASE, TARGET, 2, 99, "tensor")
    ]


def test_failed_and_skipped_pairs_keep_their_reason_and_are_not_served(engine):
    with write_transaction(engine) as connection:
        request_delta(connection, KEY, 1000, T0)
        finish_delta(connection, KEY, status="failed", now=T0, reason="x" * 5000)
        record = find_deltas(connection, [KEY])[KEY]
        assert delta_by_sha256(connection, BLOB) == []
    assert record.status == "failed"
    assert record.reason == "x" * 1024


def test_delivery_totals_count_the_bytes_each_way_of_arriving_took(engine):
    with write_transaction(engine) as connection:
        connection.execute(insert(ModelRow.__table__).values(name="m", created_at=T0))
        connection.execute(
            insert(BundleRow.__table__).values(
                model="m", version="2.0.0", release=2, sha256="e" * 64, size=1000, manifest="{}", created="x",
                signed_by=[], uploaded_at=T0,
            )
        )  # fmt: skip
        details = [{"delivery": "full"}, {"delivery": "delta", "delta_bytes": 80}, {"delivery": "kept"},
                   {"delivery": "full", "delta_bytes": 70, "delta_refused": "corrupt"}, {}]  # fmt: skip
        for index, detail in enumerate(details):
            event = Event(id="install-0001", kind="installed", at=T0, model="m", version="2.0.0", detail=detail)
            insert_events(connection, f"d{index}", [event], now=T0)
        (totals,) = delivery_totals(connection, "m")
    assert (totals.installs, totals.by_delta, totals.bundle_bytes) == (5, 1, 5000)
    assert totals.downloaded_bytes == 1000 + 80 + 0 + 1070 + 1000
    assert totals.saved_bytes == 5000 - 3150
