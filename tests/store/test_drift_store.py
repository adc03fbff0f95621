"""What the drift monitor reads: last K windows per device with tags, in one bounded query, on both back ends."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import event

from modelfleet.store import (
    BundleRow,
    Device,
    ModelRow,
    append_audit,
    insert_summaries,
    last_audit_action,
    recent_summaries,
    session_factory,
    versions_with_summaries,
)
from modelfleet.telemetry import Summary

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)


def summary(summary_id, window, *, n=10, version="1.0.0", role="active", features=((6, 4), (1, 9)), confidence=(3, 7)):
    return Summary(
        id=summary_id, model="m", version=version, role=role, window_start=T0 + window * WINDOW,
        window_seconds=300, n=n, latency_counts=(), latency_sum_ms=1.0, confidence_counts=confidence,
        confidence_sum=0.5 * n, confidence_sum_sq=0.25 * n, predicted_counts=(), feature_counts=features,
    )  # fmt: skip


def add_device(session, device_id, tags):
    session.add(Device(id=device_id, public_key="k" * 44, status="accepted", tags=tags, created_at=T0))


def add_bundle(session, version, release, parent=None):
    if session.get(ModelRow, "m") is None:
        session.add(ModelRow(name="m", created_at=T0))
        session.flush()
    row = {"sha256": "0" * 64, "size": 1, "manifest": "{}", "created": "2026-03-01T00:00:00Z", "uploaded_at": T0}
    session.add(BundleRow(model="m", version=version, release=release, parent=parent, **row))


def store(engine, device_id, summaries):
    with engine.begin() as connection:
        insert_summaries(connection, device_id, summaries, cohort=None, now=T0)


def read(engine, **changes):
    arguments = {"model": "m", "version": "1.0.0", "since": T0, "windows": 3, "max_devices": 100} | changes
    with engine.connect() as connection:
        return recent_summaries(connection, **arguments)


def test_each_device_gets_its_last_k_windows_oldest_first_with_its_counts_and_tags(engine):
    with session_factory(engine).begin() as session:
        add_device(session, "dev-a", {"site": "north"})
    store(engine, "dev-a", [summary(f"sum-a-{w:04d}", w) for w in range(5)])
    store(engine, "dev-b", [summary("sum-b-0000", 1, n=20, features=((2, 2),), confidence=(0, 20))])
    result = read(engine)
    assert [d.device_id for d in result.devices] == ["dev-a", "dev-b"]
    a, b = result.devices
    assert [w.window_start for w in a.windows] == [T0 + 2 * WINDOW, T0 + 3 * WINDOW, T0 + 4 * WINDOW]
    assert a.tags == {"site": "north"}
    assert a.windows[0].feature_counts == ((6, 4), (1, 9))
    assert a.windows[0].confidence_counts == (3, 7)
    assert b.tags == {}  # no device row: no tags, still read
    assert (b.windows[0].n, b.windows[0].feature_counts, b.windows[0].confidence_counts) == (20, ((2, 2),), (0, 20))
    assert result.truncated is False


def test_windows_before_since_other_versions_and_other_roles_are_not_read(engine):
    store(engine, "dev-a", [summary("sum-a-0000", 0), summary("sum-a-0001", 3)])
    store(engine, "dev-a", [summary("sum-a-0002", 4, version="1.1.0"), summary("sum-a-0003", 5, role="shadow")])
    result = read(engine, since=T0 + WINDOW)
    assert [[w.window_start for w in d.windows] for d in result.devices] == [[T0 + 3 * WINDOW]]
    shadow = read(engine, since=T0 + WINDOW, roles=("active", "shadow"))
    assert [w.window_start for w in shadow.devices[0].windows] == [T0 + 3 * WINDOW, T0 + 5 * WINDOW]


def test_two_summaries_of_one_window_both_come_back_and_count_as_one_window(engine):
    store(
        engine,
        "dev-a",
        [summary("sum-a-0000", 0), summary("sum-a-0001", 1), summary("sum-a-0002", 1, n=3, confidence=(1, 2))],
    )
    windows = read(engine, windows=1).devices[0].windows
    assert sorted(w.n for w in windows) == [3, 10]
    assert {w.window_start for w in windows} == {T0 + WINDOW}


def test_devices_beyond_the_bound_are_cut_and_the_cut_is_reported(engine):
    for index in range(4):
        store(engine, f"dev-{index}", [summary(f"sum-{index}-0000", 0)])
    result = read(engine, max_devices=3)
    assert [d.device_id for d in result.devices] == ["dev-0", "dev-1", "dev-2"]
    assert result.truncated is True
    assert read(engine, max_devices=4).truncated is False


def test_the_read_is_one_statement(engine):
    for index in range(3):
        store(engine, f"dev-{index}", [summary(f"sum-{index}-{w:04d}", w) for w in range(4)])
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    result = read(engine)
    assert len(result.devices) == 3
    assert len([s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]) == 1


def test_versions_with_recent_summaries_are_listed_with_their_parent(engine):
    with session_factory(engine).begin() as session:
        add_bundle(session, "1.0.0", 1)
        add_bundle(session, "1.1.0", 2, parent="1.0.0")
        add_bundle(session, "1.2.0", 3, parent="1.1.0")
    store(engine, "dev-a", [summary("sum-a-0000", 0), summary("sum-a-0001", 6, version="1.1.0")])
    with engine.connect() as connection:
        assert versions_with_summaries(connection, since=T0, limit=10) == [
            ("m", "1.0.0", None),
            ("m", "1.1.0", "1.0.0"),
        ]
        assert versions_with_summaries(connection, since=T0 + WINDOW, limit=10) == [("m", "1.1.0", "1.0.0")]
        assert versions_with_summaries(connection, since=T0, limit=1) == [("m", "1.0.0", None)]


def test_the_newest_matching_audit_action_of_a_target_is_found(engine):
    with session_factory(engine).begin() as session:
        assert last_audit_action(session, target="m/1.0.0", actions=("retrain.requested", "drift.cleared")) is None
        append_audit(session, at=T0, actor="drift", action="retrain.requested", target="m/1.0.0")
        append_audit(session, at=T0, actor="drift", action="drift.evaluated", target="m/1.0.0")
        append_audit(session, at=T0, actor="drift", action="drift.cleared", target="m/1.1.0")
    with session_factory(engine).begin() as session:
        found = last_audit_action(session, target="m/1.0.0", actions=("retrain.requested", "drift.cleared"))
        assert found == "retrain.requested"
        append_audit(session, at=T0, actor="drift", action="drift.cleared", target="m/1.0.0")
        assert last_audit_action(session, target="m/1.0.0", actions=("retrain.requested", "drift.cleared")) == (
            "drift.cleared"
        )
