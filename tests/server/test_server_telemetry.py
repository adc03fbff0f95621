"""Telemetry and events: idempotent by id, stored under the caller, aggregated per window."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from modelfleet.store import EventRow, SummaryRow, aggregate_windows

W0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
W1 = W0 + timedelta(minutes=5)


def send(fleet, device, summaries):
    return fleet.client.post("/v1/telemetry", json={"summaries": summaries}, headers=device.headers)


def count(engine, table):
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def test_the_same_batch_twice_is_stored_once(fleet, engine, summary):
    device = fleet.device("dev-1")
    batch = [summary(id=f"summary-{i:04d}") for i in range(3)]
    assert send(fleet, device, batch).json() == {"accepted": 3, "duplicates": 0}
    assert send(fleet, device, batch).json() == {"accepted": 0, "duplicates": 3}
    assert send(fleet, device, [*batch[:1], summary(id="summary-0099")]).json() == {"accepted": 1, "duplicates": 1}
    assert count(engine, SummaryRow) == 4


def test_a_summary_is_stored_with_the_callers_id_and_its_document(fleet, engine, summary):
    device = fleet.device("dev-1", tags={"cohort": "canary"})
    send(fleet, device, [summary(n=7)])
    with engine.connect() as connection:
        row = connection.execute(select(SummaryRow)).one()
    assert (row.device_id, row.cohort, row.n, row.n_scored, row.window_start) == ("dev-1", "canary", 7, 7, W0)
    assert row.body["predicted_counts"][0] == 7


# (device, version, window, n, errors) -> sums per (version, window)
SENT = [
    ("dev-1", "1.0.0", W0, 10, 1),
    ("dev-2", "1.0.0", W0, 30, 0),
    ("dev-1", "1.0.0", W1, 5, 2),
    ("dev-2", "1.1.0", W1, 20, 4),
]
EXPECTED = {
    ("1.0.0", W0): {"devices": 2, "summaries": 2, "n": 40, "errors": 1, "latency_sum_ms": 100.0},
    ("1.0.0", W1): {"devices": 1, "summaries": 1, "n": 5, "errors": 2, "latency_sum_ms": 12.5},
    ("1.1.0", W1): {"devices": 1, "summaries": 1, "n": 20, "errors": 4, "latency_sum_ms": 50.0},
}


@pytest.fixture
def sent(fleet, summary):
    devices = {name: fleet.device(name) for name in ("dev-1", "dev-2")}
    for i, (name, version, window, n, errors) in enumerate(SENT):
        document = summary(id=f"summary-{i:04d}", version=version, window_start=window.isoformat(), n=n, errors=errors)
        assert send(fleet, devices[name], [document]).json()["accepted"] == 1
    return devices


def test_aggregation_sums_per_model_version_and_window(sent, fleet):
    rows = fleet.client.get("/v1/admin/telemetry/windows", params={"model": "digits"}, headers=fleet.admin("viewer"))
    got = {
        (r["version"], datetime.fromisoformat(r["window_start"])): {k: r[k] for k in EXPECTED[("1.0.0", W0)]}
        for r in rows.json()
    }
    assert got == EXPECTED
    assert {r["confidence_sum"] for r in rows.json()} == {30.0, 3.75, 15.0}


def test_aggregation_filters_by_version_and_time(sent, engine):
    with engine.connect() as connection:
        only = aggregate_windows(connection, model="digits", version="1.0.0", since=W1)
        none = aggregate_windows(connection, model="other")
    assert [(a.version, a.window_start, a.n) for a in only] == [("1.0.0", W1, 5)]
    assert none == []


def test_events_are_idempotent_and_listed(fleet, engine, clock):
    device = fleet.device("dev-1")
    events = [
        {"id": "event-0001", "kind": "installed", "at": W0.isoformat(), "model": "digits", "version": "1.0.0"},
        {
            "id": "event-0002",
            "kind": "health_failed",
            "at": W1.isoformat(),
            "reason": "latency",
            "detail": {"p99": 12.5},
        },
    ]
    assert fleet.client.post("/v1/events", json={"events": events}, headers=device.headers).json() == {
        "accepted": 2,
        "duplicates": 0,
    }
    again = fleet.client.post("/v1/events", json={"events": events}, headers=device.headers).json()
    assert again == {"accepted": 0, "duplicates": 2}
    assert count(engine, EventRow) == 2
    listed = fleet.client.get("/v1/admin/events", params={"device_id": "dev-1"}, headers=fleet.admin()).json()
    assert [(e["id"], e["kind"], e["device_id"]) for e in listed] == [
        ("event-0002", "health_failed", "dev-1"),
        ("event-0001", "installed", "dev-1"),
    ]
    assert listed[0]["detail"] == {"p99": 12.5}


def test_devices_with_the_same_history_derive_the_same_event_ids_and_both_are_kept(fleet, engine):
    """Event ids come from the device's install journal, so they repeat across devices; idempotency is per device."""
    event = {"id": "same-install-0001", "kind": "installed", "at": W0.isoformat(), "model": "digits"}
    for name in ("dev-1", "dev-2"):
        device = fleet.device(name)
        answer = fleet.client.post("/v1/events", json={"events": [event]}, headers=device.headers).json()
        assert answer == {"accepted": 1, "duplicates": 0}
    assert count(engine, EventRow) == 2


def test_a_full_batch_is_one_insert(fleet, statements, summary):
    device = fleet.device("dev-1")
    statements.clear()
    assert send(fleet, device, [summary(id=f"summary-{i:04d}") for i in range(500)]).json()["accepted"] == 500
    inserts = [s for s in statements.writes if s.startswith("INSERT")]
    assert len(inserts) == 1, [s[:80] for s in inserts]
