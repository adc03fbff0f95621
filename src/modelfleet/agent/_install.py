"""The install engine: drives the update table (``_update``) with real I/O, one journaled step at a time.

Steps, each idempotent so that a restart can run it again:

- ``downloading``: anti-rollback on the assigned release; the bundle header is fetched
  with a ``Range`` request and checked (signatures, identity, release, compatibility
  with the device and the application) before any payload byte; then the download.
  A transport failure (after the downloader's own retries) does not fail the version:
  the install waits in ``downloading`` until ``retry_after`` (exponential backoff with
  full jitter over ``retry_base_s`` .. ``retry_cap_s``) and the next check-in resumes
  the partial file. A new assignment replaces a waiting download.
- ``verifying``: ``read_bundle`` against the pinned keys, published as a read-only version.
- ``staged``: compatibility checked again before activation.
- ``switching``: ``previous`` then ``current`` moved atomically.
- ``trial``: the health check, then (if configured) the first live inferences.
- ``rolling_back``: ``current`` and ``previous`` put back as they were.

The journal is written before each step; every outcome becomes a telemetry
:class:`~modelfleet.telemetry.Event` whose id is derived from the journal, handed to a
sink and re-sent after a restart. The running model is untouched by every failure
before the switch and restored by every failure after it.
"""

from __future__ import annotations

import io
import logging
import os
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from modelfleet._closing import Closeable
from modelfleet.agent._candidate import CandidateFile, CandidateRecord, assignment_of
from modelfleet.agent._delta import fetch_by_delta
from modelfleet.agent._download import Downloader, DownloadPolicy, backoff_delay
from modelfleet.agent._failures import disk_failure
from modelfleet.agent._health import HealthPolicy, LiveVerdict, LiveWatch, check_health
from modelfleet.agent._journal import Journal, JournalFile, Origin, Target
from modelfleet.agent._slots import CANDIDATE, CURRENT, PREVIOUS, Checkpoint, Slot, SlotStore
from modelfleet.agent._update import TERMINAL, CrashPoint, UpdateEvent, UpdateState, next_state
from modelfleet.bundle import (
    AppContract,
    DeviceProfile,
    Manifest,
    TrustedKeys,
    read_header,
    require_compatible,
    verify_signatures,
)
from modelfleet.clock import Clock, SystemClock
from modelfleet.config import BundleLimits, Settings
from modelfleet.errors import (
    BadDataError,
    BundleError,
    BundleFormatError,
    ConfigError,
    IncompatibleError,
    ManifestError,
    ModelfleetError,
    TransportError,
)
from modelfleet.protocol import DesiredModel
from modelfleet.telemetry import Event, EventKind

__all__ = ["EventSink", "InstallConfig", "Installer", "crash_checkpoint"]

logger = logging.getLogger(__name__)

EventSink = Callable[[Event], None]
"""Takes install events (the telemetry outbox); ids make a repeated event harmless."""

JOURNAL_FILE = "journal.json"
CANDIDATE_FILE = "candidate.json"
_TAR_BLOCK = 512  # a bundle header is two tar members: their header blocks and padding

_E, _S = UpdateEvent, UpdateState
_EVENT_KINDS: Mapping[UpdateEvent, tuple[EventKind, ...]] = MappingProxyType(
    {
        _E.DOWNLOAD_FAILED: ("download_failed",),
        _E.DOWNLOAD_DEFERRED: ("download_failed",),
        _E.INCOMPATIBLE: ("incompatible",),
        _E.REFUSED: ("verify_failed",),
        _E.VERIFY_FAILED: ("verify_failed",),
        _E.SWITCHED: ("installed",),
        _E.HEALTH_PASSED: ("health_passed", "committed"),
        _E.HEALTH_FAILED: ("health_failed",),
        _E.RESTORED: ("rolled_back",),
        _E.RESTORE_FAILED: ("rolled_back",),
        _E.LOOP: ("crash_loop",),
    }
)
"""The telemetry each outcome produces; the rest are progress, visible in check-ins."""


def _no_checkpoint(point: CrashPoint) -> None:
    """Checkpoint for normal operation."""


def crash_checkpoint(settings: Settings) -> Checkpoint:
    """The test-only crash hook: SIGKILL this process at ``settings.crash_at`` (``MODELFLEET_CRASH_AT``).

    Raises:
        ConfigError: ``crash_at`` names no :class:`CrashPoint`.
    """
    wanted = settings.crash_at
    if wanted is None:
        return _no_checkpoint
    if wanted not in {point.value for point in CrashPoint}:
        msg = f"MODELFLEET_CRASH_AT={wanted!r} names no crash point; known: {', '.join(CrashPoint)}"
        raise ConfigError(msg, code="bad_setting")

    def checkpoint(point: CrashPoint) -> None:
        if point == wanted:
            logger.warning("crash hook: SIGKILL at %s", point.value)
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallConfig:
    """What the installer knows about the device, its trust anchors and its bounds.

    Attributes:
        trusted: the pinned signing keys and threshold.
        device: what the device is (checked against every bundle before download and activation).
        app: what the application feeds the model; ``None`` skips the tensor checks.
        keep_versions: versions retained per model (``current`` and ``previous`` always are).
        max_state_visits: entries into one state, restarts included, before it counts as a loop.
        download: bounds of downloads.
        health: how the health check runs and how many live inferences it watches.
        limits: bounds for reading bundles.
        retry_base_s: first backoff ceiling after a download failed in transit; it doubles per failure.
        retry_cap_s: largest backoff ceiling (and the longest a wall clock set back can postpone a retry).
        use_deltas: rebuild a bundle from a delta the server offers (falls back to the full bundle on any problem).
    """

    trusted: TrustedKeys
    device: DeviceProfile
    app: AppContract | None = None
    keep_versions: int = 3
    max_state_visits: int = 3
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    limits: BundleLimits = field(default_factory=BundleLimits)
    retry_base_s: float = 30.0
    retry_cap_s: float = 3600.0
    use_deltas: bool = True


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one step ended with: the table event, and for failures a reason and code."""

    event: UpdateEvent
    reason: str | None = None
    code: str | None = None
    detail: Mapping[str, str | int | float | bool | None] = field(default_factory=dict)

    @classmethod
    def of(cls, event: UpdateEvent, error: ModelfleetError | OSError) -> _Outcome:
        """A failure outcome from an error."""
        if isinstance(error, ModelfleetError):
            return cls(event, error.message, error.code)
        return cls(event, *disk_failure(error))


class Installer(Closeable):
    """Installs, commits and rolls back model versions on this device.

    Args:
        root: the agent's data directory (``models/`` lives in it).
        config: device, keys and bounds.
        sink: receives every install event.
        clock: event timestamps (never earlier than the last one journaled).
        settings: process settings; only ``crash_at`` is read.
        downloader: fetches bundles; one is made from ``config.download`` when ``None``.
        checkpoint: called at every :class:`CrashPoint` (a simulator's power cut); by default
            the crash hook of ``settings``.
        rng: randomness of the retry backoff's jitter.
    """

    def __init__(
        self,
        root: Path,
        config: InstallConfig,
        *,
        sink: EventSink | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        downloader: Downloader | None = None,
        checkpoint: Checkpoint | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._checkpoint = checkpoint or crash_checkpoint(settings or Settings())
        self.slots = SlotStore(root, keep=config.keep_versions, limits=config.limits, checkpoint=self._checkpoint)
        self._sink = sink
        self._clock = clock or SystemClock()
        self._own_downloader = downloader is None
        self._downloader = downloader or Downloader(config.download)
        self._live: dict[str, tuple[str, LiveWatch]] = {}  # model -> (version on trial, its watch)
        self._steps: Mapping[UpdateState, Callable[[Journal], _Outcome | None]] = {
            _S.DOWNLOADING: self._download,
            _S.VERIFYING: self._verify,
            _S.STAGED: self._activate,
            _S.SWITCHING: self._switch,
            _S.TRIAL: self._trial,
            _S.ROLLING_BACK: self._rollback,
        }

    def close(self) -> None:
        """Close the downloader if this installer made it."""
        if self._own_downloader:
            self._downloader.close()

    # ------------------------------------------------------------ public

    def journal(self, model: str) -> Journal:
        """The journaled lifecycle of ``model`` (idle when nothing was ever installed)."""
        return self._journal_file(model).load() or Journal(model=model)

    def assign(self, desired: DesiredModel, *, nonce: str | None = None) -> Journal:
        """Install what the server wants, unless it runs already or failed under this same assignment.

        ``nonce`` (else the rollout or experiment id) names the assignment: a version
        that failed is retried only under a different one. An install in progress is
        finished first.

        Raises:
            BadDataError: ``bad_assignment``: the desired model is malformed.
            OSError: the journal cannot be written (a full disk); the running model is untouched.
        """
        target = _target(desired, nonce)
        with self.slots.lock(target.model):
            journal = self.journal(target.model)
            if journal.state == _S.DOWNLOADING and journal.target is not None:
                if _identity(journal.target) != _identity(target) and not journal.has_failed(target):
                    # Nothing was touched yet: the download in progress (or waiting to retry) gives way.
                    self._discard_download(journal.target, keep=target.sha256)
                    return self._drive(self._start(journal, target))
                journal = journal.model_copy(update={"target": target})  # the freshest URL for the same bundle
            if journal.state not in TERMINAL:
                journal = self._drive(journal)
            if journal.state not in TERMINAL or self.slots.link(target.model, CURRENT) == target.slot:
                return journal  # a trial still waits for live inferences, or the target runs already
            if journal.has_failed(target):
                logger.info("not retrying %s %s under assignment %s", target.model, target.version, target.assignment)
                return journal
            return self._drive(self._start(journal, target))

    def resume(self) -> dict[str, Journal]:
        """After a start or a crash: clean leftovers, re-send events, and finish every install in progress."""
        results = {}
        for model in self.slots.models():
            with self.slots.lock(model):
                results[model] = self._resume(model)
        return results

    def run(self, model: str) -> Journal:
        """Continue ``model``'s install without counting a restart (after live inferences were observed)."""
        with self.slots.lock(model):
            return self._drive(self.journal(model))

    def settle_trials(self) -> None:
        """Drive every live trial on, so one ends at its deadline (or on a verdict) even while the server is away."""
        for model in self.slots.models():
            if self.journal(model).state == _S.TRIAL:
                self.run(model)

    def observe_live(self, model: str, error: bool, *, version: str | None = None) -> bool:
        """Count one live inference of ``model`` while its new version is on trial (thread-safe).

        An inference of another ``version`` (an application still serving the old one) is not counted.
        Returns whether the watch has come to a verdict, so the caller can drive the trial on at once.
        """
        entry = self._live.get(model)
        if entry is None or (version is not None and version != entry[0]):
            return False
        entry[1].observe_live(error)
        return entry[1].verdict() != LiveVerdict.PENDING

    # ------------------------------------------------------------ candidates (shadow, time slice)

    def candidate(self, model: str) -> CandidateRecord | None:
        """The candidate recorded for ``model`` (ready or failed), if any."""
        return self._candidate_file(model).load()

    def stage_candidate(self, desired: DesiredModel) -> CandidateRecord | None:
        """Install ``desired``'s candidate beside the active version; ``current`` and ``previous`` never move.

        The checks of any install run (signatures, identity, compatibility before the download and
        after publishing, the health check). A candidate that fails one is recorded ``failed``,
        reported and dropped, and not tried again under the same assignment; the active version
        serves on. ``None`` while a download that failed in transit waits for the next check-in.

        Raises:
            OSError: the record cannot be written (a full disk); the running model is untouched.
        """
        model = desired.model
        with self.slots.lock(model):
            record = self._candidate_file(model).load()
            if record is not None and record.same_candidate(desired):
                if record.state == "failed":
                    return record
                if self.slots.link(model, CANDIDATE) == record.slot and self.slots.exists(model, record.slot):
                    return self._keep_candidate(record, desired)
            outcome = self._stage_candidate(desired)
            if outcome.event == _E.DOWNLOAD_DEFERRED:
                logger.warning("%s candidate: %s; trying again at the next check-in", model, outcome.reason)
                return None
            passed = outcome.event == _E.HEALTH_PASSED
            return self._candidate_outcome(
                CandidateRecord.of(desired, "ready" if passed else "failed", outcome.reason), outcome
            )

    def fail_candidate(self, model: str, reason: str, code: str) -> CandidateRecord | None:
        """A ready candidate the application could not run (e.g. it cannot load it beside the active one): drop it."""
        with self.slots.lock(model):
            record = self._candidate_file(model).load()
            if record is None or record.state != "ready":
                return record
            failed = record.model_copy(update={"state": "failed", "reason": reason[:2048]})
            return self._candidate_outcome(failed, _Outcome(_E.INCOMPATIBLE, reason, code))

    def drop_candidate(self, model: str) -> None:
        """Stop running a candidate beside ``model``'s active version (the experiment ended); idempotent."""
        with self.slots.lock(model):
            if self.slots.link(model, CANDIDATE) is None and not self._candidate_file(model).path.exists():
                return
            self.slots.point(model, CANDIDATE, None)
            self._candidate_file(model).remove()
            self.slots.gc(model)
            logger.info("%s: candidate dropped", model)

    def _keep_candidate(self, record: CandidateRecord, desired: DesiredModel) -> CandidateRecord:
        """The staged candidate, its mode and schedule as the server says now."""
        fresh = CandidateRecord.of(desired, "ready")
        if fresh != record:
            self._candidate_file(record.model).save(fresh)
        return fresh

    def _candidate_outcome(self, record: CandidateRecord, outcome: _Outcome) -> CandidateRecord:
        """Record, link (or unlink) and report a staged or failed candidate."""
        model = record.model
        passed = record.state == "ready"
        if passed:
            self.slots.point(model, CANDIDATE, record.slot)
        else:
            self.slots.point(model, CANDIDATE, None)
        self._candidate_file(model).save(record)
        for suffix in (".mfb", ".partial"):
            (self.slots.downloads_dir(model) / f"{record.sha256}{suffix}").unlink(missing_ok=True)
        self.slots.gc(model)
        kind: EventKind = "installed" if passed else _EVENT_KINDS.get(outcome.event, ("install_failed",))[0]
        detail: dict[str, str | int | float | bool | None] = {
            "role": "candidate", "mode": record.mode, "assignment": record.assignment, "code": outcome.code,
            **outcome.detail,
        }  # fmt: skip
        event = Event(
            id=record.event_id(kind), kind=kind, at=self._clock.now(), model=model, version=record.version,
            reason=record.reason, detail=detail,
        )  # fmt: skip
        if passed:
            logger.info("%s: candidate %s ready (%s)", model, record.version, record.mode)
        else:
            logger.warning("%s: candidate %s failed and is dropped: %s", model, record.version, record.reason)
        self._emit(event)
        return record

    def _stage_candidate(self, desired: DesiredModel) -> _Outcome:
        """Download, verify, publish and health-check the candidate; ``HEALTH_PASSED`` when it may run."""
        target = _candidate_target(desired)
        if self.slots.link(target.model, CURRENT) == target.slot:
            return _Outcome(_E.REFUSED, f"the candidate {target.version} is the active version", "candidate_is_active")
        if not self.slots.exists(target.model, target.slot):
            early = self._candidate_header(target) or self._candidate_download(target)
            if early is not None:
                return early
        try:
            slot, manifest = self._published(target)
            _check_identity(manifest, target)
        except (BundleError, OSError) as exc:
            return _Outcome.of(_E.VERIFY_FAILED, exc)
        early = self._compatibility(manifest)
        if early is not None:
            return early
        report = check_health(slot.path, manifest, self.config.health)
        if not report.passed:
            return _Outcome(_E.HEALTH_FAILED, "; ".join(report.reasons), "health", dict(report.measurements))
        return _Outcome(_E.HEALTH_PASSED, detail=dict(report.measurements))

    def _candidate_header(self, target: Target) -> _Outcome | None:
        """Refuse a candidate from its signed header alone, before the payload is downloaded."""
        try:
            manifest = self._header(target)
            _check_identity(manifest, target)
        except TransportError as exc:
            return _Outcome.of(_E.DOWNLOAD_DEFERRED, exc)
        except BundleError as exc:
            return _Outcome.of(_E.VERIFY_FAILED, exc)
        return self._compatibility(manifest)

    def _candidate_download(self, target: Target) -> _Outcome | None:
        """Download the candidate in full (a delta applies to what runs, not to a version beside it)."""
        try:
            self._downloader.fetch(
                target.url, self.slots.downloads_dir(target.model), sha256=target.sha256, size=target.size
            )
        except TransportError as exc:
            return _Outcome.of(_E.DOWNLOAD_DEFERRED, exc)
        except BadDataError as exc:
            return _Outcome.of(_E.DOWNLOAD_FAILED, exc)
        return None

    def _published(self, target: Target) -> tuple[Slot, Manifest]:
        """The candidate's version, published from its download or verified again where it exists."""
        slot = self.slots.slot(target.model, target.slot)
        if slot.path.is_dir():
            return slot, self.slots.verify(slot, self.config.trusted)
        bundle = self.slots.downloads_dir(target.model) / f"{target.sha256}.mfb"
        published = self.slots.publish(
            target.model, bundle, self.config.trusted, version=target.version, sha256=target.sha256
        )
        return published, published.manifest()

    def _candidate_file(self, model: str) -> CandidateFile:
        return CandidateFile(self.slots.model_dir(model) / CANDIDATE_FILE)

    # ------------------------------------------------------------ driving

    def _resume(self, model: str) -> Journal:
        journal = self.journal(model)
        target = journal.target
        resumable = target is not None and journal.state in {_S.DOWNLOADING, _S.VERIFYING}
        keep = [target.sha256] if target is not None and resumable else []
        self.slots.recover(model, keep_downloads=keep)
        for event in journal.events:
            self._emit(event)
        if journal.state in TERMINAL:
            self._finish(journal)
            return journal
        if not self._waiting(journal):  # a restart while waiting to retry ran nothing that could have crashed
            journal = journal.entering(journal.state)  # a restart inside a state counts as a visit
            self._save(journal)
        return self._drive(journal)

    def _start(self, journal: Journal, target: Target) -> Journal:
        origin = Origin(
            current=self.slots.link(target.model, CURRENT), previous=self.slots.link(target.model, PREVIOUS)
        )
        journal = self._advance(journal.started(target, origin), _Outcome(_E.ASSIGNED))
        self._checkpoint(CrashPoint.AFTER_ASSIGN)
        return journal

    def _drive(self, journal: Journal) -> Journal:
        """Run steps until a terminal state, or until the trial waits for live inferences."""
        while journal.state not in TERMINAL:
            if journal.visited(journal.state) > self.config.max_state_visits:
                outcome: _Outcome | None = self._loop(journal)
            else:
                outcome = self._steps[journal.state](journal)
            if outcome is None:
                return journal
            if outcome.event == _E.DOWNLOAD_DEFERRED:
                return self._defer(journal, outcome)  # tried again at a later check-in, not in this one
            journal = self._advance(journal, outcome)
        self._finish(journal)
        return journal

    def _loop(self, journal: Journal) -> _Outcome:
        count = journal.visited(journal.state)
        reason = f"state {journal.state.value} entered {count} times across restarts; stopping the loop"
        return _Outcome(_E.LOOP, reason, "loop", {"visits": count})

    def _advance(self, journal: Journal, outcome: _Outcome) -> Journal:
        """Apply the table, journal the new state (with its events) durably, then hand the events on."""
        state = next_state(journal.state, outcome.event)
        updated = journal.entering(state)
        if outcome.event == _E.DOWNLOADED and "delivery" in outcome.detail:
            delivery = {key: value for key, value in outcome.detail.items() if isinstance(value, str | int)}
            updated = updated.model_copy(update={"delivery": delivery})
        if outcome.reason is not None:
            updated = updated.model_copy(update={"reason": outcome.reason[:2048], "code": outcome.code})
        if state in {_S.FAILED, _S.ROLLED_BACK}:
            updated = updated.with_failure(updated.reason or state.value)
        updated, events = self._with_events(updated, journal.state, outcome)
        self._save(updated)
        logger.info("%s: %s -> %s (%s)", journal.model, journal.state.value, state.value, outcome.event.value)
        for event in events:
            self._emit(event)
        if state == _S.COMMITTED:
            self._checkpoint(CrashPoint.AFTER_COMMIT)
        return updated

    def _defer(self, journal: Journal, outcome: _Outcome) -> Journal:
        """A download failed in transit: stay in ``downloading``, report it, and wait out a backoff.

        The wait is no state entry (the loop counter counts crashes, not outages), and only
        the latest of these events waits in the journal for a resend.
        """
        next_state(journal.state, outcome.event)  # declared in the table, like every other move
        retries = journal.retries + 1
        delay = backoff_delay(retries - 1, self._rng, self.config.retry_base_s, self.config.retry_cap_s)
        at = self._event_time(journal)
        target = _require_target(journal)
        reason = (outcome.reason or "download failed")[:2048]
        event = Event(
            id=journal.event_id("download_failed", f"retry-{retries}"),
            kind="download_failed",
            at=at,
            model=journal.model,
            version=target.version,
            reason=reason,
            detail={**_event_detail(journal, journal.state, outcome), "retry": retries, "retry_in_s": round(delay, 3)},
        )
        kept = tuple(e for e in journal.events if "retry" not in e.detail)
        updated = journal.model_copy(
            update={
                "retries": retries,
                "retry_after": self._clock.now() + timedelta(seconds=delay),
                "reason": reason,
                "code": outcome.code,
                "events": (*kept, event),
                "clock_floor": at,
            }
        )
        self._save(updated)
        logger.warning(
            "%s %s: download failed in transit (%s); retry %d in %.0f s",
            journal.model,
            target.version,
            outcome.code,
            retries,
            delay,
        )
        self._emit(event)
        return updated

    def _waiting(self, journal: Journal) -> bool:
        """Is a deferred download still in its backoff (a clock set back never postpones it beyond the cap)."""
        due = journal.retry_after
        if journal.state != _S.DOWNLOADING or due is None:
            return False
        now = self._clock.now()
        return now < due and due - now <= timedelta(seconds=self.config.retry_cap_s)

    def _discard_download(self, old: Target, *, keep: str) -> None:
        """Drop the files of a download that a new assignment replaced (unless it is the same bundle)."""
        if old.sha256 == keep:
            return
        downloads = self.slots.downloads_dir(old.model)
        for suffix in (".mfb", ".partial"):
            (downloads / f"{old.sha256}{suffix}").unlink(missing_ok=True)

    def _finish(self, journal: Journal) -> None:
        """After a terminal state: drop the download, then collect old versions."""
        target = journal.target
        if target is None:
            return
        downloads = self.slots.downloads_dir(target.model)
        for suffix in (".mfb", ".partial"):
            (downloads / f"{target.sha256}{suffix}").unlink(missing_ok=True)
        self.slots.gc(target.model)

    # ------------------------------------------------------------ steps

    def _download(self, journal: Journal) -> _Outcome | None:
        target = _require_target(journal)
        if self._waiting(journal):
            return None  # a transport failure waits out its backoff; a later check-in tries again
        try:
            self._check_release(journal, target.release)
        except BadDataError as exc:
            return _Outcome.of(_E.REFUSED, exc)
        if self.slots.exists(target.model, target.slot):
            return _Outcome(_E.DOWNLOADED, detail={"delivery": "kept"})  # from an earlier install; verified next
        delivery: dict[str, str | int] = {}
        if target.delta is not None and self.config.use_deltas:
            by_delta = fetch_by_delta(self._downloader, self.slots, target, journal.origin.current)
            delivery = {"delta_bytes": by_delta.fetched, "bytes_saved": by_delta.saved}
            if by_delta.delivered:
                return self._delta_checked(journal, target) or self._delta_delivered(delivery)
            delivery["delta_refused"] = by_delta.reason or ""
        return self._precheck(journal, target) or self._fetch(target, delivery)

    def _delta_checked(self, journal: Journal, target: Target) -> _Outcome | None:
        """The precheck of a bundle rebuilt from a delta, on its local header; ``None`` when it may go on."""
        bundle = self.slots.downloads_dir(target.model) / f"{target.sha256}.mfb"
        try:
            header = read_header(bundle, self.config.limits)
            verify_signatures(header.manifest_bytes, header.signature_bytes, self.config.trusted, self.config.limits)
        except BundleError as exc:
            return _Outcome.of(_E.VERIFY_FAILED, exc)
        return self._judge(journal, target, header.manifest) or self._compatibility(header.manifest)

    def _delta_delivered(self, delivery: Mapping[str, str | int]) -> _Outcome:
        self._checkpoint(CrashPoint.AFTER_DOWNLOAD)
        return _Outcome(_E.DOWNLOADED, detail={"delivery": "delta", **delivery})

    def _fetch(self, target: Target, delivery: Mapping[str, str | int]) -> _Outcome:
        """Download the bundle: bad bytes fail the version, a failed transfer is retried later."""
        directory = self.slots.downloads_dir(target.model)
        try:
            self._downloader.fetch(
                target.url, directory, sha256=target.sha256, size=target.size, progress=self._download_progress(target)
            )
        except TransportError as exc:
            return _Outcome.of(_E.DOWNLOAD_DEFERRED, exc)
        except BadDataError as exc:
            return _Outcome.of(_E.DOWNLOAD_FAILED, exc)
        self._checkpoint(CrashPoint.AFTER_DOWNLOAD)
        return _Outcome(_E.DOWNLOADED, detail={"delivery": "full", **delivery})

    def _download_progress(self, target: Target) -> Callable[[int], None]:
        def progress(done: int) -> None:
            if done * 2 >= target.size:
                self._checkpoint(CrashPoint.MID_DOWNLOAD)

        return progress

    def _precheck(self, journal: Journal, target: Target) -> _Outcome | None:
        """Refuse from the signed header alone, before the payload is downloaded."""
        try:
            manifest = self._header(target)
        except TransportError as exc:
            return _Outcome.of(_E.DOWNLOAD_DEFERRED, exc)
        except BundleError as exc:
            return _Outcome.of(_E.VERIFY_FAILED, exc)
        return self._judge(journal, target, manifest) or self._compatibility(manifest)

    def _judge(self, journal: Journal, target: Target, manifest: Manifest) -> _Outcome | None:
        """Identity and release of a signed manifest; ``None`` when it may go on."""
        try:
            _check_identity(manifest, target)
            self._check_release(journal, manifest.release)
        except ManifestError as exc:
            return _Outcome.of(_E.VERIFY_FAILED, exc)
        except BadDataError as exc:
            return _Outcome.of(_E.REFUSED, exc)
        return None

    def _compatibility(self, manifest: Manifest) -> _Outcome | None:
        """Does the bundle fit the device and the application; ``None`` when it does."""
        try:
            require_compatible(manifest, self.config.device, self.config.app)
        except IncompatibleError as exc:
            return _Outcome.of(_E.INCOMPATIBLE, exc)
        return None

    def _header(self, target: Target) -> Manifest:
        """Fetch just enough of the bundle to read and verify its signed manifest."""
        limits = self.config.limits
        bound = min(target.size, limits.max_manifest_bytes + limits.max_signature_bytes + 4 * _TAR_BLOCK)
        count = min(self.config.download.head_bytes, bound)
        while True:
            head = self._downloader.fetch_head(target.url, count)
            try:
                header = read_header(io.BytesIO(head), limits)
                break
            except BundleFormatError as exc:
                if exc.code != "truncated" or count >= bound:
                    raise
                count = min(count * 4, bound)
        verify_signatures(header.manifest_bytes, header.signature_bytes, self.config.trusted, limits)
        return header.manifest

    def _verify(self, journal: Journal) -> _Outcome:
        target = _require_target(journal)
        slot = self.slots.slot(target.model, target.slot)
        try:
            if slot.path.is_dir():
                manifest = self.slots.verify(slot, self.config.trusted)
            else:
                bundle = self.slots.downloads_dir(target.model) / f"{target.sha256}.mfb"
                manifest = self.slots.publish(
                    target.model, bundle, self.config.trusted, version=target.version, sha256=target.sha256
                ).manifest()
        except (BundleError, OSError) as exc:
            return _Outcome.of(_E.VERIFY_FAILED, exc)
        return self._judge(journal, target, manifest) or _Outcome(_E.VERIFIED)

    def _activate(self, journal: Journal) -> _Outcome:
        target = _require_target(journal)
        (self.slots.downloads_dir(target.model) / f"{target.sha256}.mfb").unlink(missing_ok=True)
        manifest = self.slots.slot(target.model, target.slot).manifest()
        return self._compatibility(manifest) or _Outcome(_E.ACTIVATE)

    def _switch(self, journal: Journal) -> _Outcome:
        target = _require_target(journal)
        try:
            self.slots.switch(target.model, target.slot, previous=journal.origin.current)
        except OSError as exc:
            return _Outcome.of(_E.SWITCH_FAILED, exc)
        self._checkpoint(CrashPoint.AFTER_SWITCH)
        return _Outcome(_E.SWITCHED, detail={"previous": journal.origin.current})

    def _trial(self, journal: Journal) -> _Outcome | None:
        target = _require_target(journal)
        if not any(event.kind == "health_passed" for event in journal.events):
            return self._health(journal, target)
        watch = self._live.setdefault(target.model, (target.version, self._new_watch()))[1]
        verdict = watch.verdict(self._trial_elapsed_s(journal, watch))
        if verdict == LiveVerdict.PENDING:
            return None
        if verdict == LiveVerdict.FAILED:
            return _Outcome(_E.HEALTH_FAILED, watch.reason, "live_too_few" if watch.expired else "live_errors")
        self._live.pop(target.model, None)
        return self._commit_outcome({"live_inferences": watch.seen, "live_deadline_reached": watch.expired})

    def _trial_elapsed_s(self, journal: Journal, watch: LiveWatch) -> float:
        """Seconds on trial: by the journaled pass (a restart does not start over) or this run's monotonic clock.

        The larger of the two, so a wall clock set back (a device without a real-time clock) cannot hold a
        trial open, and a restart cannot either.
        """
        passed = next(event.at for event in journal.events if event.kind == "health_passed")
        return max((self._clock.now() - passed).total_seconds(), self._clock.monotonic() - watch.began)

    def _health(self, journal: Journal, target: Target) -> _Outcome | None:
        slot = self.slots.slot(target.model, target.slot)
        report = check_health(slot.path, slot.manifest(), self.config.health)
        self._checkpoint(CrashPoint.MID_TRIAL)
        detail = dict(report.measurements)
        if not report.passed:
            return _Outcome(_E.HEALTH_FAILED, "; ".join(report.reasons), "health", detail)
        if self.config.health.live_inferences == 0:
            return self._commit_outcome(detail)
        self._live[target.model] = (target.version, self._new_watch())
        updated, events = self._with_events(journal, journal.state, _Outcome(_E.HEALTH_PASSED, detail=detail), 1)
        self._save(updated)
        for event in events:
            self._emit(event)
        return None

    def _new_watch(self) -> LiveWatch:
        health = self.config.health
        return LiveWatch(
            health.live_inferences,
            health.max_live_errors,
            deadline_s=health.live_deadline_s,
            min_inferences=health.min_live_inferences,
            began=self._clock.monotonic(),
        )

    def _commit_outcome(self, detail: Mapping[str, str | int | float | bool | None]) -> _Outcome:
        self._checkpoint(CrashPoint.BEFORE_COMMIT)
        return _Outcome(_E.HEALTH_PASSED, detail=detail)

    def _rollback(self, journal: Journal) -> _Outcome:
        target = _require_target(journal)
        self._checkpoint(CrashPoint.BEFORE_ROLLBACK)
        origin = journal.origin
        previous = origin.previous if origin.previous and self.slots.exists(target.model, origin.previous) else None
        try:
            self.slots.restore(target.model, origin.current, previous)
        except OSError as exc:
            return _Outcome.of(_E.RESTORE_FAILED, exc)
        self._live.pop(target.model, None)
        self._checkpoint(CrashPoint.AFTER_ROLLBACK)
        return _Outcome(_E.RESTORED, detail={"restored": origin.current})

    # ------------------------------------------------------------ checks

    def _check_release(self, journal: Journal, release: int) -> None:
        """Anti-rollback: below the running release only when the server says ``rollback``.

        Raises:
            BadDataError: ``release_rollback``.
        """
        target = _require_target(journal)
        running = journal.origin.current
        if target.rollback or running is None or not self.slots.exists(target.model, running):
            return
        installed = self.slots.slot(target.model, running).manifest().release
        if release < installed:
            msg = f"release {release} is below the installed release {installed} and the assignment is no rollback"
            raise BadDataError(msg, code="release_rollback")

    # ------------------------------------------------------------ journal and events

    def _journal_file(self, model: str) -> JournalFile:
        return JournalFile(self.slots.model_dir(model) / JOURNAL_FILE)

    def _save(self, journal: Journal) -> None:
        self._journal_file(journal.model).save(journal)

    def _with_events(
        self, journal: Journal, before: UpdateState, outcome: _Outcome, limit: int | None = None
    ) -> tuple[Journal, list[Event]]:
        """The journal with the outcome's events added (each id once) and the events themselves."""
        kinds = _EVENT_KINDS.get(outcome.event, ())[:limit]
        if not kinds:
            return journal, []
        at = self._event_time(journal)
        target = journal.target
        events = [
            Event(
                id=journal.event_id(kind),
                kind=kind,
                at=at,
                model=journal.model,
                version=target.version if target else None,
                reason=(outcome.reason or journal.reason or "")[:2048] or None,
                detail=_event_detail(journal, before, outcome),
            )
            for kind in kinds
        ]
        known = {event.id for event in journal.events}
        fresh = [event for event in events if event.id not in known]
        return journal.model_copy(update={"events": (*journal.events, *fresh), "clock_floor": at}), fresh

    def _event_time(self, journal: Journal) -> datetime:
        """Now, but never before the last event: a clock reset to 1970 must not send events back in time."""
        now = self._clock.now()
        floor = journal.clock_floor
        return floor if floor is not None and now < floor else now

    def _emit(self, event: Event) -> None:
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception:
            # The event stays in the journal and is re-sent on the next start; an install never fails on telemetry.
            logger.exception("event sink refused %s event %s", event.kind, event.id)


def _event_detail(
    journal: Journal, before: UpdateState, outcome: _Outcome
) -> dict[str, str | int | float | bool | None]:
    """Where the event happened in the lifecycle, and the outcome's own measurements."""
    target = journal.target
    return {
        "code": outcome.code,
        "from_state": before.value,
        "state": journal.state.value,
        "attempt": journal.attempt,
        "release": target.release if target else None,
        "assignment": target.assignment if target else None,
        **journal.delivery,
        **outcome.detail,
    }


def _target(desired: DesiredModel, nonce: str | None) -> Target:
    try:
        return Target.from_desired(desired, nonce)
    except ValidationError as exc:
        msg = f"desired model {desired.model!r} cannot be installed: {exc.errors()[0]['msg']}"
        raise BadDataError(msg, code="bad_assignment") from None


def _identity(target: Target) -> tuple[str, str, str]:
    """What makes two assignments the same install (the URL may change between check-ins)."""
    return target.version, target.sha256, target.assignment


def _candidate_target(desired: DesiredModel) -> Target:
    """The candidate of a shadow or time-slice assignment as an install target (never switched to)."""
    candidate = desired.candidate
    if candidate is None:
        msg = f"{desired.model} {desired.version} has no candidate"
        raise RuntimeError(msg)
    return Target(
        model=desired.model, version=candidate.version, release=candidate.release, sha256=candidate.artifact.sha256,
        size=candidate.artifact.size, url=candidate.artifact.url, assignment=assignment_of(desired),
    )  # fmt: skip


def _require_target(journal: Journal) -> Target:
    if journal.target is None:
        msg = f"journal of {journal.model} is in state {journal.state.value} without a target"
        raise RuntimeError(msg)
    return journal.target


def _check_identity(manifest: Manifest, target: Target) -> None:
    """The signed manifest must be what the server assigned: name, version and release."""
    if (manifest.name, manifest.version, manifest.release) != (target.model, target.version, target.release):
        msg = (
            f"bundle is {manifest.name} {manifest.version} release {manifest.release}, "
            f"but {target.model} {target.version} release {target.release} was assigned"
        )
        raise ManifestError(msg, code="identity")
