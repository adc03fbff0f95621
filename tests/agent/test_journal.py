"""The install journal: atomic, durable, and the memory of loops and failures across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.agent import Journal, JournalFile, Origin, Target, UpdateState
from modelfleet.agent._journal import MAX_FAILED
from modelfleet.errors import BadDataError
from modelfleet.protocol import Artifact, DesiredModel
from modelfleet.telemetry import Event

SHA = "ab" * 32


def target(version: str = "1.2.0", assignment: str = "rollout-1", sha256: str = SHA) -> Target:
    return Target(
        model="digits",
        version=version,
        release=3,
        sha256=sha256,
        size=100,
        url="http://127.0.0.1/b.mfb",
        assignment=assignment,
    )


def desired(**fields) -> DesiredModel:
    values = {
        "model": "digits",
        "version": "1.2.0",
        "release": 3,
        "artifact": Artifact(url="http://x/b", sha256=SHA, size=10),
    } | fields
    return DesiredModel(**values)


@pytest.fixture
def journal_file(tmp_path) -> JournalFile:
    return JournalFile(tmp_path / "models" / "digits" / "journal.json")


def test_a_saved_journal_loads_back_equal(journal_file):
    journal = (
        Journal(model="digits")
        .started(target(), Origin(current="1.0.0-aaaaaaaaaaaa"))
        .entering(UpdateState.DOWNLOADING)
    )
    journal_file.save(journal)

    assert journal_file.load() == journal


def test_saving_leaves_no_temporary_file(journal_file):
    for state in (UpdateState.DOWNLOADING, UpdateState.VERIFYING, UpdateState.STAGED):
        journal_file.save(Journal(model="digits").entering(state))

    assert [p.name for p in journal_file.path.parent.iterdir()] == ["journal.json"]


def test_a_failed_write_keeps_the_previous_journal_whole(journal_file, monkeypatch):
    old = Journal(model="digits").entering(UpdateState.DOWNLOADING)
    journal_file.save(old)

    def power_cut(self, target):
        raise OSError(5, "I/O error during rename")

    monkeypatch.setattr(Path, "replace", power_cut)
    with pytest.raises(OSError, match="I/O error"):
        journal_file.save(old.entering(UpdateState.VERIFYING))
    monkeypatch.undo()

    assert journal_file.load() == old
    assert [p.name for p in journal_file.path.parent.iterdir()] == ["journal.json"]


def test_no_journal_means_nothing_was_installed(journal_file):
    assert journal_file.load() is None


@pytest.mark.parametrize("content", [b"", b"{", b'{"format": "modelfleet.journal.v9", "model": "digits"}'])
def test_an_unreadable_journal_is_read_as_none(journal_file, content, caplog):
    journal_file.path.parent.mkdir(parents=True)
    journal_file.path.write_bytes(content)

    assert journal_file.load() is None
    assert "unreadable" in caplog.text


def test_entering_a_state_counts_its_visits():
    journal = Journal(model="digits")
    for _ in range(3):
        journal = journal.entering(UpdateState.TRIAL)

    assert journal.state == UpdateState.TRIAL
    assert journal.visited(UpdateState.TRIAL) == 3
    assert journal.visited(UpdateState.STAGED) == 0


def test_a_new_attempt_resets_counters_and_events_but_remembers_failures():
    journal = Journal(model="digits").started(target("1.0.0"), Origin()).entering(UpdateState.TRIAL)
    journal = journal.model_copy(update={"reason": "latency"}).with_failure("latency")

    fresh = journal.started(target("2.0.0"), Origin(current="1.0.0-abababababab"))

    assert (fresh.attempt, fresh.visits, fresh.reason, fresh.events) == (2, {}, None, ())
    assert [f.version for f in fresh.failed] == ["1.0.0"]


def test_a_failed_version_counts_as_failed_only_under_the_same_assignment():
    journal = Journal(model="digits").started(target(), Origin()).with_failure("health")

    assert journal.has_failed(target())
    assert not journal.has_failed(target(assignment="rollout-2"))
    assert not journal.has_failed(target(sha256="cd" * 32))


def test_the_failed_set_is_bounded():
    journal = Journal(model="digits")
    for n in range(MAX_FAILED + 5):
        journal = journal.started(target(f"1.0.{n}"), Origin()).with_failure("x")

    assert len(journal.failed) == MAX_FAILED
    assert journal.failed[-1].version == f"1.0.{MAX_FAILED + 4}"


def test_event_ids_are_deterministic_per_attempt_and_kind():
    journal = Journal(model="digits").started(target(), Origin())
    same = Journal.model_validate_json(journal.to_bytes())

    assert journal.event_id("installed") == same.event_id("installed")
    assert journal.event_id("installed") != journal.event_id("committed")
    assert journal.event_id("installed") != journal.started(target(), Origin()).event_id("installed")
    Event(id=journal.event_id("committed"), kind="committed", at="2026-01-01T00:00:00Z")  # fits the wire pattern


def test_the_target_names_its_content_addressed_slot():
    assert target().slot == "1.2.0-" + "ab" * 6


@pytest.mark.parametrize(
    ("fields", "nonce", "assignment"),
    [
        ({"rollout_id": "r-7"}, None, "r-7"),
        ({"experiment_id": "e-2"}, None, "e-2"),
        ({"rollout_id": "r-7"}, "retry-1", "retry-1"),
        ({}, None, "default"),
    ],
)
def test_the_assignment_is_the_nonce_else_the_rollout_else_the_experiment(fields, nonce, assignment):
    assert Target.from_desired(desired(**fields), nonce).assignment == assignment


def test_a_desired_version_that_is_not_semver_is_bad_data(tmp_path):
    from modelfleet.agent._install import _target  # noqa: PLC0415 - the boundary that wraps the error

    with pytest.raises(BadDataError, match="cannot be installed") as caught:
        _target(desired(version="latest"), None)
    assert caught.value.code == "bad_assignment"
