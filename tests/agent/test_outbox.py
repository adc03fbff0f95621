"""The outbox keeps every summary and event it acknowledged, across restarts and a killed writer, within its bounds."""

import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime

import pytest

from modelfleet.agent import Outbox
from modelfleet.errors import StoreError, TooLargeError
from modelfleet.telemetry import LATENCY_EDGES_MS, Event, Summary

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def summary(number):
    return Summary(
        id=f"summary-{number:08d}",
        model="digits",
        version="1.0.0",
        window_start=START,
        window_seconds=300,
        n=3,
        latency_counts=(3,) + (0,) * (len(LATENCY_EDGES_MS) - 2),
        latency_sum_ms=1.5,
        confidence_counts=(1, 2),
        confidence_sum=2.0,
        confidence_sum_sq=1.5,
        predicted_counts=(2, 1),
        feature_counts=((1, 2), (3, 0)),
    )


def event(number, reason="timeout"):
    return Event(id=f"event-{number:08d}", kind="fallback", at=START, model="digits", version="1.0.0", reason=reason)


def add_events(outbox, numbers):
    for number in numbers:
        assert outbox.add_event(event(number))


def pending_ids(outbox, limit=10_000, kind=None):
    return [item.id for item in outbox.pending(limit, kind)]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "agent" / "outbox.db"


@pytest.fixture
def outbox(path):
    with Outbox(path) as box:
        yield box


# ------------------------------------------------------------------ storing and sending


def test_items_come_back_oldest_first_as_they_were_stored(outbox):
    outbox.add_summary(summary(1))
    outbox.add_event(event(2))
    outbox.add_summary(summary(3))

    items = outbox.pending(10)

    assert [(item.kind, item.id) for item in items] == [
        ("summary", "summary-00000001"),
        ("event", "event-00000002"),
        ("summary", "summary-00000003"),
    ]
    assert Summary.model_validate_json(items[0].body) == summary(1)
    assert Event.model_validate_json(items[1].body) == event(2)
    assert pending_ids(outbox, 1) == ["summary-00000001"]
    assert pending_ids(outbox, kind="event") == ["event-00000002"]


def test_the_same_id_is_stored_once(outbox):
    assert outbox.add_event(event(1))
    assert not outbox.add_event(event(1, reason="offered again"))

    (item,) = outbox.pending(10)
    assert Event.model_validate_json(item.body).reason == "timeout"


def test_sent_items_leave_the_queue_and_are_not_queued_again(outbox):
    add_events(outbox, range(4))

    assert outbox.mark_sent(["event-00000000", "event-00000002", "event-00000002", "unknown"]) == 2
    assert outbox.mark_sent(["event-00000000"]) == 0
    assert not outbox.add_event(event(0))  # a replay of something delivered stays delivered

    assert pending_ids(outbox) == ["event-00000001", "event-00000003"]
    counts = outbox.counts()
    assert (counts.pending, counts.sent, counts.dropped) == (2, 2, {})


def test_many_ids_are_marked_in_one_call(outbox):
    add_events(outbox, range(1200))

    assert outbox.mark_sent(f"event-{number:08d}" for number in range(1200)) == 1200
    assert outbox.pending(10) == []


# ------------------------------------------------------------------ durability


def test_everything_survives_a_close_and_reopen(path):
    with Outbox(path) as first:
        add_events(first, range(10))
        first.add_summary(summary(10))
        first.mark_sent(["event-00000003"])
        before = (first.pending(100), first.counts())

    with Outbox(path) as second:
        assert (second.pending(100), second.counts()) == before
        assert not second.add_event(event(3))


def test_commits_are_fsynced_in_wal_mode(outbox, path):
    assert outbox._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    with sqlite3.connect(path) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from modelfleet.agent import Outbox
    outbox = Outbox(Path(sys.argv[1]))
    number = 0
    while True:
        item_id = f"event-{number:08d}"
        outbox.add("event", item_id, '{"padding": "' + "x" * 2000 + '"}')
        print(item_id, flush=True)  # only after add() returned, i.e. after the commit
        number += 1
    """
)


def test_a_writer_killed_mid_stream_loses_nothing_it_committed(path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = [writer.stdout.readline().strip() for _ in range(300)]

    writer.kill()  # SIGKILL: no cleanup, possibly in the middle of a transaction
    writer.wait()
    committed += [line.strip() for line in writer.stdout if line.strip()]

    with Outbox(path) as reopened:
        stored = pending_ids(reopened)
        assert reopened._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert stored[: len(committed)] == committed
    assert len(stored) - len(committed) <= 1  # at most the one committed while its id was being printed


# ------------------------------------------------------------------ bounds


def test_when_full_sent_items_go_first_then_the_oldest_unsent_ones_are_dropped_and_counted(path):
    with Outbox(path, max_items=5) as outbox:
        add_events(outbox, range(3))
        outbox.mark_sent(["event-00000000", "event-00000001"])
        add_events(outbox, range(3, 7))  # two sent items make room

        assert pending_ids(outbox) == [f"event-{n:08d}" for n in range(2, 7)]
        assert outbox.counts().dropped == {}

        outbox.add_summary(summary(7))  # only unsent items are left: the oldest one goes

        assert pending_ids(outbox) == [f"event-{n:08d}" for n in range(3, 7)] + ["summary-00000007"]
        assert outbox.counts().dropped == {"event": 1}

    with Outbox(path, max_items=5) as reopened:
        assert reopened.counts().dropped == {"event": 1}


def test_the_byte_bound_holds_too(path):
    size = len(event(0).model_dump_json().encode())
    with Outbox(path, max_bytes=3 * size) as outbox:
        add_events(outbox, range(5))

        counts = outbox.counts()
        assert pending_ids(outbox) == [f"event-{n:08d}" for n in range(2, 5)]
        assert (counts.bytes, counts.dropped) == (3 * size, {"event": 2})


def test_an_item_larger_than_the_whole_outbox_is_refused(path):
    with Outbox(path, max_bytes=100) as outbox:
        with pytest.raises(TooLargeError) as refused:
            outbox.add_summary(summary(1))
        assert refused.value.code == "outbox_item_too_large"
        assert outbox.counts().pending == 0


def test_bounds_must_be_positive(path):
    with pytest.raises(ValueError, match="positive"):
        Outbox(path, max_items=0)


def test_an_outbox_written_by_a_newer_version_is_refused(path):
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 2")

    with pytest.raises(StoreError) as refused:
        Outbox(path)
    assert refused.value.code == "outbox_schema"


# ------------------------------------------------------------------ threads


def test_concurrent_writers_and_a_sender_lose_nothing(outbox):
    def write(first):
        add_events(outbox, range(first, first + 200))

    writers = [threading.Thread(target=write, args=(start,)) for start in range(0, 800, 200)]
    for thread in writers:
        thread.start()
    sent = []
    while any(thread.is_alive() for thread in writers) or outbox.pending(1):
        batch = pending_ids(outbox, 50)
        outbox.mark_sent(batch)
        sent += batch
    for thread in writers:
        thread.join()

    assert sorted(sent) == [f"event-{n:08d}" for n in range(800)]
    assert outbox.counts().sent == 800
