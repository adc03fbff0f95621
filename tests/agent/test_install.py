"""The installer end to end: real bundles over real HTTP on loopback, real ONNX Runtime health checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelfleet.agent import (
    CrashPoint,
    DownloadPolicy,
    HealthPolicy,
    Installer,
    SlotStore,
    UpdateState,
    crash_checkpoint,
)
from modelfleet.bundle import AppContract, TensorSpec
from modelfleet.clock import ManualClock
from modelfleet.config import Settings, load_settings
from modelfleet.errors import ConfigError
from modelfleet.telemetry import Event

MODEL = "digits"


@dataclass
class Sink:
    """Collects events as an outbox would: by id, so a resend is a no-op."""

    events: dict[str, Event] = field(default_factory=dict)
    received: int = 0

    def __call__(self, event: Event) -> None:
        self.received += 1
        previous = self.events.setdefault(event.id, event)
        assert previous.kind == event.kind, "one id must always name the same event"

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events.values()]

    def of(self, kind: str) -> Event:
        matches = [e for e in self.events.values() if e.kind == kind]
        assert len(matches) == 1, (kind, self.kinds())
        return matches[0]


class PowerCut(BaseException):
    """Raised by a checkpoint to stop the installer mid-step, as a power cut would."""


def cut_at(point: CrashPoint):
    def checkpoint(reached: CrashPoint) -> None:
        if reached == point:
            raise PowerCut(point.value)

    return checkpoint


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def installer(tmp_path, kit, sink) -> Iterator[Installer]:
    with Installer(tmp_path, kit.config(), sink=sink) as agent:
        yield agent


@pytest.fixture(scope="module")
def on_v1(kit, tmp_path_factory) -> Path:
    """An agent root running v1, made once per module and copied by tests."""
    root = tmp_path_factory.mktemp("on-v1")
    with Installer(root, kit.config()) as agent:
        assert agent.assign(kit.desired(kit.bundles.v1)).state == UpdateState.COMMITTED
    return root


@pytest.fixture
def root_v1(on_v1, tmp_path, kit) -> Path:
    return kit.copy_store(on_v1, tmp_path / "agent")


def agent_on(root: Path, kit, sink, **overrides) -> Installer:
    checkpoint = overrides.pop("checkpoint", None)
    clock = overrides.pop("clock", None)
    rng = overrides.pop("rng", None)
    return Installer(root, kit.config(**overrides), sink=sink, checkpoint=checkpoint, clock=clock, rng=rng)


class Longest(random.Random):
    """Backoff jitter that always waits the longest, so a retry is never due by chance."""

    def uniform(self, a: float, b: float) -> float:  # noqa: ARG002 - random.Random's signature
        return b


def current(root: Path) -> str | None:
    return SlotStore(root).link(MODEL, "current")


def previous(root: Path) -> str | None:
    return SlotStore(root).link(MODEL, "previous")


# ------------------------------------------------------------------ success


def test_first_install_commits_and_reports_each_step(installer, kit, sink, tmp_path):
    journal = installer.assign(kit.desired(kit.bundles.v1))

    assert journal.state == UpdateState.COMMITTED
    assert current(tmp_path) == kit.bundles.v1.slot
    assert previous(tmp_path) is None
    assert sink.kinds() == ["installed", "health_passed", "committed"]
    assert sink.of("health_passed").detail["latency_ms"] > 0
    assert kit.leftovers(tmp_path) == []


def test_upgrade_keeps_the_old_version_as_previous(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.assign(kit.desired(kit.bundles.v2))

    assert journal.state == UpdateState.COMMITTED
    assert (current(root_v1), previous(root_v1)) == (kit.bundles.v2.slot, kit.bundles.v1.slot)
    store = SlotStore(root_v1)
    assert store.verify(store.slot(MODEL, kit.bundles.v2.slot), kit.bundles.trusted).version == "2.0.0"


def test_a_running_version_is_not_installed_again(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        before = len(kit.server.requests)
        journal = agent.assign(kit.desired(kit.bundles.v1))

    assert journal.state == UpdateState.COMMITTED
    assert len(kit.server.requests) == before
    assert sink.events == {}


def test_the_published_version_is_read_only(installer, kit, tmp_path):
    installer.assign(kit.desired(kit.bundles.v1))
    version = tmp_path / "models" / MODEL / "current"

    assert oct(version.resolve().stat().st_mode & 0o777) == oct(0o555)
    assert {oct(p.stat().st_mode & 0o777) for p in version.iterdir()} == {oct(0o444)}


def test_old_versions_beyond_the_retention_are_collected(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink, keep_versions=1) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
        agent.assign(kit.desired(kit.bundles.v1, rollback=True))

    names = [slot.name for slot in SlotStore(root_v1).versions(MODEL)]
    assert sorted(names) == sorted([kit.bundles.v1.slot, kit.bundles.v2.slot])  # current and previous stay


# ------------------------------------------------------------------ health failure and rollback


def test_a_version_failing_its_health_check_is_rolled_back_with_the_reason(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.assign(kit.desired(kit.bundles.slow))

    assert journal.state == UpdateState.ROLLED_BACK
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.kinds() == ["installed", "health_failed", "rolled_back"]
    assert "latency" in (sink.of("health_failed").reason or "")
    assert "latency" in (sink.of("rolled_back").reason or "")
    assert [f.version for f in journal.failed] == ["3.0.0"]


def test_a_failed_version_is_not_retried_unless_assigned_again(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        agent.assign(kit.desired(kit.bundles.slow))
        requests, events = len(kit.server.seen("v3.mfb")), sink.received
        again = agent.assign(kit.desired(kit.bundles.slow))
        assert (len(kit.server.seen("v3.mfb")), sink.received) == (requests, events)
        assert again.state == UpdateState.ROLLED_BACK

        retried = agent.assign(kit.desired(kit.bundles.slow), nonce="operator-retry-2")

    assert retried.attempt == again.attempt + 1
    assert retried.state == UpdateState.ROLLED_BACK
    assert len([e for e in sink.events.values() if e.kind == "health_failed"]) == 2


def test_live_inferences_that_fail_roll_the_version_back(root_v1, kit, sink):
    health = HealthPolicy(latency_runs=3, live_inferences=3, max_live_errors=0)
    with agent_on(root_v1, kit, sink, health=health) as agent:
        waiting = agent.assign(kit.desired(kit.bundles.v2))
        assert (waiting.state, current(root_v1)) == (UpdateState.TRIAL, kit.bundles.v2.slot)
        agent.observe_live(MODEL, error=False)
        agent.observe_live(MODEL, error=True)
        journal = agent.run(MODEL)

    assert journal.state == UpdateState.ROLLED_BACK
    assert current(root_v1) == kit.bundles.v1.slot
    assert "1 of the first 2 live inferences failed" in (sink.of("rolled_back").reason or "")


def test_live_inferences_without_errors_commit(root_v1, kit, sink):
    health = HealthPolicy(latency_runs=3, live_inferences=2)
    with agent_on(root_v1, kit, sink, health=health) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
        assert agent.run(MODEL).state == UpdateState.TRIAL
        for _ in range(2):
            agent.observe_live(MODEL, error=False)
        journal = agent.run(MODEL)

    assert journal.state == UpdateState.COMMITTED
    assert sink.kinds() == ["installed", "health_passed", "committed"]


def test_a_quiet_trial_commits_at_its_deadline_with_what_it_saw(root_v1, kit, sink):
    clock = ManualClock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
    health = HealthPolicy(latency_runs=3, live_inferences=100, live_deadline_s=600.0, min_live_inferences=1)
    with agent_on(root_v1, kit, sink, health=health, clock=clock) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
        agent.observe_live(MODEL, error=False)
        clock.advance(599.0)
        agent.settle_trials()
        assert agent.journal(MODEL).state == UpdateState.TRIAL
        clock.advance(1.0)
        agent.settle_trials()

    assert agent.journal(MODEL).state == UpdateState.COMMITTED
    assert current(root_v1) == kit.bundles.v2.slot
    assert sink.of("committed").detail["live_deadline_reached"] is True


def test_a_trial_that_saw_too_few_inferences_by_its_deadline_rolls_back(root_v1, kit, sink):
    clock = ManualClock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
    health = HealthPolicy(latency_runs=3, live_inferences=100, live_deadline_s=600.0, min_live_inferences=5)
    with agent_on(root_v1, kit, sink, health=health, clock=clock) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
        agent.observe_live(MODEL, error=False)
        clock.advance(600.0)
        agent.settle_trials()

    assert agent.journal(MODEL).state == UpdateState.ROLLED_BACK
    assert current(root_v1) == kit.bundles.v1.slot
    assert "reached its deadline of 600 s with 1 of 100" in (sink.of("rolled_back").reason or "")


def test_a_restart_does_not_start_the_trial_deadline_over(root_v1, kit, sink):
    # Events never go back in time, so the trial's journaled start is no earlier than the fixture's real install.
    clock = ManualClock(datetime.now(UTC) + timedelta(minutes=1))
    health = HealthPolicy(latency_runs=3, live_inferences=100, live_deadline_s=600.0)
    with agent_on(root_v1, kit, sink, health=health, clock=clock) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
    clock.advance(600.0)
    with agent_on(root_v1, kit, sink, health=health, clock=clock) as restarted:
        restarted.resume()
        restarted.settle_trials()

        assert restarted.journal(MODEL).state == UpdateState.COMMITTED


# ------------------------------------------------------------------ anti-rollback


def test_a_lower_release_is_refused_without_the_rollback_flag(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
        journal = agent.assign(kit.desired(kit.bundles.v1))

    assert journal.state == UpdateState.FAILED
    assert current(root_v1) == kit.bundles.v2.slot
    refusal = sink.of("verify_failed")
    assert refusal.detail["code"] == "release_rollback"
    assert "below the installed release 2" in (refusal.reason or "")


def test_a_lower_release_is_installed_when_the_server_asks_for_a_rollback(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
        journal = agent.assign(kit.desired(kit.bundles.v1, rollback=True))

    assert journal.state == UpdateState.COMMITTED
    assert (current(root_v1), previous(root_v1)) == (kit.bundles.v1.slot, kit.bundles.v2.slot)


# ------------------------------------------------------------------ refusals before the switch


@dataclass(frozen=True)
class Hostile:
    """A bad bundle or a bad server, and the event it must produce."""

    name: str
    kind: str
    code: str


def tampered(data: bytes) -> bytes:
    """The bundle with the last payload byte before the end-of-archive flipped (signature still valid)."""
    body = bytearray(data)
    end = len(body.rstrip(b"\x00")) - 1
    body[end] ^= 0x01
    return bytes(body)


def test_an_incompatible_bundle_is_refused_from_its_header_before_the_payload_is_fetched(root_v1, kit, sink):
    alien = kit.bundles.alien
    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.assign(kit.desired(alien))

    assert journal.state == UpdateState.FAILED
    assert current(root_v1) == kit.bundles.v1.slot
    event = sink.of("incompatible")
    assert "riscv64" in (event.reason or "")
    assert all(r.range is not None and r.range.startswith("bytes=0-") for r in kit.server.seen("v4.mfb"))
    assert kit.leftovers(root_v1) == []


def test_compatibility_is_checked_again_before_activation(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink, checkpoint=cut_at(CrashPoint.AFTER_PUBLISH)) as agent, pytest.raises(PowerCut):
        agent.assign(kit.desired(kit.bundles.v2))
    other_app = AppContract(inputs=(TensorSpec(name="X", dtype="float32", shape=("N", 32)),))

    with agent_on(root_v1, kit, sink, app=other_app) as agent:
        journal = agent.resume()[MODEL]

    assert journal.state == UpdateState.FAILED
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.of("incompatible").detail["from_state"] == "staged"


def test_a_tampered_payload_is_refused_by_the_bundle_reader(root_v1, kit, sink):
    bad = tampered(kit.bundles.v2.data)
    kit.server.serve("tampered.mfb", bad)
    wanted = kit.desired(kit.bundles.v2, "tampered.mfb", sha256=hashlib.sha256(bad).hexdigest())
    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.assign(wanted)

    assert journal.state == UpdateState.FAILED
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.of("verify_failed").detail["code"] == "hash_mismatch"
    assert kit.leftovers(root_v1) == []


def test_bytes_that_do_not_hash_to_the_assigned_sha256_are_refused(root_v1, kit, sink):
    kit.server.serve("swapped.mfb", tampered(kit.bundles.v2.data))
    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.assign(kit.desired(kit.bundles.v2, "swapped.mfb"))

    assert journal.state == UpdateState.FAILED
    assert sink.of("download_failed").detail["code"] == "hash_mismatch"
    assert current(root_v1) == kit.bundles.v1.slot


def test_a_bundle_signed_by_an_unknown_key_is_refused_before_download(root_v1, kit, sink):
    stranger = kit.build("2.1.0", 5)
    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.assign(kit.desired(stranger, "stranger.mfb"))

    assert journal.state == UpdateState.FAILED
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.of("verify_failed").detail["code"] == "unknown_key"
    assert all(r.range and r.range.startswith("bytes=0-") for r in kit.server.seen("stranger.mfb"))


# A transport failure leaves the install waiting in ``downloading`` for a retry; bad bytes fail the version.
HOSTILE_SERVERS = {
    "stalls": ({"stall_after": 12 * 1024}, "stalled", UpdateState.DOWNLOADING),
    "trickles": ({"chunk": 64, "delay": 0.05}, "too_slow", UpdateState.DOWNLOADING),
    "oversends": ({"extra": b"\x00" * 4096}, "oversized", UpdateState.FAILED),
    "oversends_without_length": ({"extra": b"\x00" * 4096, "declare_length": False}, "oversized", UpdateState.FAILED),
    "answers_500": ({"status": 500}, "http_5xx", UpdateState.DOWNLOADING),
    "answers_404": ({"status": 404}, "http_404", UpdateState.DOWNLOADING),
}


@pytest.mark.parametrize("behaviour", sorted(HOSTILE_SERVERS))
def test_a_hostile_server_leaves_the_running_model_untouched(behaviour, root_v1, kit, sink):
    knobs, code, state = HOSTILE_SERVERS[behaviour]
    name = f"hostile-{behaviour}.mfb"
    kit.serve(name, kit.bundles.v2.data, **knobs)
    impatient = DownloadPolicy(deadline_s=10, read_timeout_s=0.5, window_s=0.5, max_retries=0, head_bytes=2048)
    with agent_on(root_v1, kit, sink, download=impatient) as agent:
        journal = agent.assign(kit.desired(kit.bundles.v2, name))

    assert journal.state == state
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.of("download_failed").detail["code"] == code
    assert journal.has_failed(journal.target) == (state == UpdateState.FAILED)
    # Only a download waiting to resume may keep its partial file.
    assert all(entry.endswith(".partial") for entry in kit.leftovers(root_v1))
    if state == UpdateState.FAILED:
        assert kit.leftovers(root_v1) == []


def test_a_transport_failure_is_retried_with_backoff_at_a_later_check_in(root_v1, kit, sink):
    """A connection reset defers the install; after the backoff the next call downloads it and commits."""
    name = "resets-once.mfb"
    half = len(kit.bundles.v2.data) // 2
    # The header probe asks for 2 KiB, 8 KiB, then the whole (small) bundle: the third reply is cut.
    kit.serve(name, kit.bundles.v2.data, chunk=512, drop_after=half, drops=3)
    clock = ManualClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    no_retry_inside = DownloadPolicy(deadline_s=10, read_timeout_s=1, max_retries=0, head_bytes=2048)
    with agent_on(root_v1, kit, sink, download=no_retry_inside, clock=clock, retry_base_s=60.0) as agent:
        desired = kit.desired(kit.bundles.v2, name)
        first = agent.assign(desired)
        assert first.state == UpdateState.DOWNLOADING
        assert (first.retries, first.code) == (1, "connection")
        assert first.retry_after is not None
        assert first.failed == ()
        requests = len(kit.server.seen(name))

        waiting = agent.assign(desired)  # a check-in inside the backoff does not hammer the server
        assert waiting.state == UpdateState.DOWNLOADING
        assert len(kit.server.seen(name)) == requests

        clock.advance(61)  # past the largest first backoff (full jitter under 60 s)
        done = agent.assign(desired)

    assert done.state == UpdateState.COMMITTED
    assert current(root_v1) == kit.bundles.v2.slot
    assert len(kit.server.seen(name)) > requests
    retry = sink.of("download_failed")
    assert (retry.detail["retry"], retry.detail["code"]) == (1, "connection")
    assert sorted(sink.kinds()) == ["committed", "download_failed", "health_passed", "installed"]
    assert kit.leftovers(root_v1) == []


def test_a_new_assignment_replaces_a_download_waiting_to_retry(root_v1, kit, sink):
    kit.serve("down.mfb", kit.bundles.v2.data, status=503)
    with agent_on(root_v1, kit, sink) as agent:
        waiting = agent.assign(kit.desired(kit.bundles.v2, "down.mfb"))
        assert waiting.state == UpdateState.DOWNLOADING
        replaced = agent.assign(kit.desired(kit.bundles.v2), nonce="rollout-2")

    assert replaced.state == UpdateState.COMMITTED
    assert (replaced.attempt, replaced.target.assignment) == (waiting.attempt + 1, "rollout-2")
    assert current(root_v1) == kit.bundles.v2.slot


def test_restarts_while_waiting_to_retry_are_not_a_crash_loop(root_v1, kit, sink):
    kit.serve("down-long.mfb", kit.bundles.v2.data, status=503)
    config = {"max_state_visits": 1, "retry_base_s": 3600.0, "rng": Longest()}
    with agent_on(root_v1, kit, sink, **config) as agent:
        assert agent.assign(kit.desired(kit.bundles.v2, "down-long.mfb")).state == UpdateState.DOWNLOADING
    for _ in range(3):  # the device reboots during the outage
        with agent_on(root_v1, kit, sink, **config) as agent:
            journal = agent.resume()[MODEL]

    assert journal.state == UpdateState.DOWNLOADING
    assert journal.failed == ()
    assert current(root_v1) == kit.bundles.v1.slot


# ------------------------------------------------------------------ disk full (a real tmpfs)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs: ENOSPC comes from a real file system, not a mock.

    The tests run as root here, so mounting works; where it does not (no CAP_SYS_ADMIN)
    the test is skipped rather than faked.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    info = os.statvfs(disk)
    free = info.f_bavail * info.f_frsize
    with (disk / "filler").open("ab") as handle:
        handle.write(b"\x00" * max(free - leave, 0))


def test_disk_full_during_download_is_reported_and_leaves_no_partial_file(small_disk, on_v1, kit, sink):
    root = kit.copy_store(on_v1, small_disk / "agent")
    data = kit.bundles.v2.data
    filled = []

    def fill_once(sent: int) -> None:
        if sent >= len(data) // 2 and not filled:
            filled.append(sent)
            fill(small_disk, 8192)  # less than the rest of the download; a journal write still fits

    kit.serve("fills-disk.mfb", data, chunk=2048, delay=0.01, on_sent=fill_once)
    with agent_on(root, kit, sink) as agent:
        journal = agent.assign(kit.desired(kit.bundles.v2, "fills-disk.mfb"))

    assert journal.state == UpdateState.DOWNLOADING  # a full disk may clear up: tried again later
    assert journal.failed == ()
    assert sink.of("download_failed").detail["code"] == "no_space"
    assert current(root) == kit.bundles.v1.slot
    assert kit.leftovers(root) == []


def test_disk_full_during_publish_is_reported_and_leaves_nothing_half_published(small_disk, on_v1, kit, sink):
    root = kit.copy_store(on_v1, small_disk / "agent")
    fill(small_disk, len(kit.bundles.v2.data) + 12 * 1024)
    lenient = DownloadPolicy(space_margin=1.0, deadline_s=10, read_timeout_s=1)
    with agent_on(root, kit, sink, download=lenient) as agent:
        journal = agent.assign(kit.desired(kit.bundles.v2))

    assert journal.state == UpdateState.FAILED
    event = sink.of("verify_failed")
    assert (event.detail["code"], event.detail["from_state"]) == ("no_space", "verifying")
    assert current(root) == kit.bundles.v1.slot
    assert kit.leftovers(root) == []


def test_the_free_space_check_refuses_a_download_that_cannot_fit(root_v1, kit, sink):
    from modelfleet.agent import Downloader  # noqa: PLC0415

    config = kit.config()
    downloader = Downloader(config.download, free_space=lambda _path: 1000)
    with Installer(root_v1, config, sink=sink, downloader=downloader) as agent:
        before = len(kit.server.seen("v2.mfb"))
        journal = agent.assign(kit.desired(kit.bundles.v2))

    assert journal.state == UpdateState.DOWNLOADING
    assert sink.of("download_failed").detail["code"] == "no_space"
    ranged = [r for r in kit.server.seen("v2.mfb")[before:] if not (r.range or "").startswith("bytes=0-")]
    assert ranged == []  # only the header probe went out
    downloader.close()


# ------------------------------------------------------------------ restarts


def test_an_interrupted_install_resumes_where_the_journal_says(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink, checkpoint=cut_at(CrashPoint.BETWEEN_SYMLINKS)) as agent, pytest.raises(PowerCut):
        agent.assign(kit.desired(kit.bundles.v2))
    assert agent.journal(MODEL).state == UpdateState.SWITCHING

    with agent_on(root_v1, kit, sink) as agent:
        journal = agent.resume()[MODEL]

    assert journal.state == UpdateState.COMMITTED
    assert (current(root_v1), previous(root_v1)) == (kit.bundles.v2.slot, kit.bundles.v1.slot)
    assert kit.leftovers(root_v1) == []


def test_a_state_that_keeps_crashing_is_stopped_by_the_loop_counter(root_v1, kit, sink):
    cut = cut_at(CrashPoint.MID_TRIAL)
    with agent_on(root_v1, kit, sink, checkpoint=cut) as agent, contextlib.suppress(PowerCut):
        agent.assign(kit.desired(kit.bundles.v2))
    for _ in range(2):
        with agent_on(root_v1, kit, sink, checkpoint=cut) as agent, pytest.raises(PowerCut):
            agent.resume()

    with agent_on(root_v1, kit, sink, checkpoint=cut) as agent:
        journal = agent.resume()[MODEL]

    assert journal.state == UpdateState.ROLLED_BACK
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.of("crash_loop").detail["visits"] == 4
    assert "trial entered 4 times" in (sink.of("rolled_back").reason or "")


def test_a_loop_before_the_switch_fails_without_touching_the_running_model(root_v1, kit, sink):
    cut = cut_at(CrashPoint.AFTER_DOWNLOAD)
    with agent_on(root_v1, kit, sink, checkpoint=cut) as agent, contextlib.suppress(PowerCut):
        agent.assign(kit.desired(kit.bundles.v2))
    for _ in range(3):
        with agent_on(root_v1, kit, sink, checkpoint=cut) as agent, contextlib.suppress(PowerCut):
            agent.resume()
    journal = agent.journal(MODEL)

    assert journal.state == UpdateState.FAILED
    assert current(root_v1) == kit.bundles.v1.slot
    assert sink.of("crash_loop").detail["from_state"] == "downloading"
    assert kit.leftovers(root_v1) == []


def test_events_resent_after_a_restart_keep_their_ids(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink, checkpoint=cut_at(CrashPoint.AFTER_ROLLBACK)) as agent, pytest.raises(PowerCut):
        agent.assign(kit.desired(kit.bundles.slow))
    first = dict(sink.events)

    with agent_on(root_v1, kit, sink) as agent:
        agent.resume()
        agent.resume()

    assert set(first) <= set(sink.events)
    assert sink.received > len(sink.events)  # resent, and deduplicated by id
    assert sink.kinds() == ["installed", "health_failed", "rolled_back"]


def test_event_times_never_go_back_when_the_clock_resets_to_1970(root_v1, kit, sink):
    with agent_on(root_v1, kit, sink) as agent:
        agent.assign(kit.desired(kit.bundles.v2))
    late = max(e.at for e in sink.events.values())
    epoch = ManualClock(datetime(1970, 1, 1, tzinfo=UTC))

    with agent_on(root_v1, kit, sink, clock=epoch) as agent:
        agent.assign(kit.desired(kit.bundles.v1, rollback=True))

    assert min(e.at for e in sink.events.values()) >= datetime(2000, 1, 1, tzinfo=UTC)
    assert max(e.at for e in sink.events.values()) == late


def test_a_sink_that_fails_never_fails_the_install(root_v1, kit):
    def broken(event: Event) -> None:
        raise ConnectionError("outbox is down")

    with Installer(root_v1, kit.config(), sink=broken) as agent:
        journal = agent.assign(kit.desired(kit.bundles.v2))

    assert journal.state == UpdateState.COMMITTED
    assert [e.kind for e in journal.events] == ["installed", "health_passed", "committed"]


# ------------------------------------------------------------------ the crash hook


def test_the_crash_hook_is_read_from_modelfleet_crash_at():
    settings = load_settings({"MODELFLEET_CRASH_AT": "between_symlinks"})

    assert settings.crash_at == "between_symlinks"
    assert crash_checkpoint(settings) is not crash_checkpoint(Settings())


def test_an_unknown_crash_point_is_a_config_error():
    with pytest.raises(ConfigError, match="names no crash point"):
        crash_checkpoint(load_settings({"MODELFLEET_CRASH_AT": "mid_lunch"}))
