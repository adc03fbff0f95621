"""``Agent``: the device loop. Enroll, check in, install what the server wants, forward telemetry.

One :meth:`Agent.step` is one iteration and never sleeps (so tests drive it);
:meth:`Agent.run_forever` repeats it, waiting ``poll_seconds`` after a good
step and a full-jitter exponential backoff after a failed one. :meth:`Agent.wake`
ends that wait early (no sooner than ``wake_min_interval_s`` after the last step,
so a flood of wake-ups cannot turn into a flood of check-ins); with ``mqtt_url``
configured, the server's MQTT wake-ups call it (:mod:`modelfleet.agent._wake`). Events and
summaries wait in the :class:`Outbox` and are marked sent only after the server
acknowledged them; the server stores each id once, so a resend after a lost
acknowledgement is harmless (exactly once end to end).

Shadow and time slice: when the check-in's desired model carries a ``candidate``,
the agent installs it beside the running version once that version has settled
(:meth:`Installer.stage_candidate`: the checks of any install, ``current`` never
moves) and drops it when the answer no longer names it. :meth:`Agent.serving` tells
the application what its :class:`Predictor` should run (active version, candidate,
mode, schedule); :func:`open_served` builds one from it. A candidate that fails a
check is reported and dropped; the active version serves on.

Live health: with ``HealthPolicy.live_inferences`` set, a new version stays on trial
until the application's :class:`Predictor` served that many calls with it. The
predictor handed to the agent (:meth:`Agent.use_predictor`; the application gives it
a new one built on ``current`` after a switch) reports every served call; the first
verdict wakes the loop, whose next step commits the version or rolls it back and
reports the reason.

Files in the data directory: ``agent.json`` (server, trust anchors, tags;
0600 as it may hold the enrollment token), ``identity/`` (key pair,
credential), ``state.json`` (enrollment status, ETag and the last desired
state, last error), ``outbox.sqlite``, ``models/`` (the installer's store).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet._closing import Closeable
from modelfleet.agent._candidate import CandidateFile, Serving
from modelfleet.agent._client import ClockSkewError, CredentialRejectedError, DeviceClient
from modelfleet.agent._download import Downloader, DownloadPolicy, backoff_delay, disk_free
from modelfleet.agent._health import HealthPolicy
from modelfleet.agent._http import HttpTransport
from modelfleet.agent._identity import CredentialFile, DeviceIdentity, write_private
from modelfleet.agent._install import CANDIDATE_FILE, InstallConfig, Installer
from modelfleet.agent._journal import JournalFile
from modelfleet.agent._outbox import Outbox, OutboxKind
from modelfleet.agent._slots import CANDIDATE, CURRENT, PREVIOUS, SlotStore
from modelfleet.agent._wake import WakeListener
from modelfleet.bundle import DELTA_READABLE_VERSIONS, DeviceProfile, PublicKey, TrustedKeys
from modelfleet.clock import Clock, SystemClock
from modelfleet.config import ProxySettings
from modelfleet.errors import BadDataError, ConfigError, ModelfleetError, PermissionDeniedError, TransportError
from modelfleet.protocol import (
    EXPERIMENT_MODES,
    MAX_BATCH,
    CheckinRequest,
    DesiredModel,
    EventBatch,
    InstalledModel,
    TelemetryBatch,
)
from modelfleet.telemetry import Event, Summary

if TYPE_CHECKING:
    from modelfleet.agent._predictor import Predictor  # numpy and ONNX Runtime: only an application's loop has one

__all__ = ["AGENT_CONFIG", "Agent", "AgentConfig", "AgentState", "StepResult", "agent_status"]

logger = logging.getLogger(__name__)

AGENT_CONFIG = "agent.json"
STATE_FILE = "state.json"
OUTBOX_FILE = "outbox.sqlite"
_DISK_QUANTUM = 16 * 1024 * 1024  # report free disk coarsely so check-ins do not change with every byte
_STOP_SLICE_S = 0.25  # how quickly a sleeping loop notices ``stop`` (it waits on the wake-up event)
EnrollStatus = Literal["new", "pending", "accepted", "revoked"]


class AgentConfig(BaseModel):
    """What ``agent run`` saved on first start: the server, the trust anchors, who the device is.

    Attributes:
        server: the fleet server's base URL.
        device_id: the device id (also in ``identity/device.json``).
        trusted_keys: PEM public keys bundles must be signed by.
        threshold: how many distinct trusted keys must sign.
        tags: the device's own tags, reported in its inventory.
        enroll_token: the enrollment token to enroll with, if any.
        mqtt_url: the MQTT broker the server sends wake-ups through (``mqtt://host:1883``), if any.
        proxy_url: the HTTP proxy for every request (``http://[user:password@]host[:port]``), replacing
            ``HTTPS_PROXY`` and ``HTTP_PROXY``; ``NO_PROXY`` still applies. ``None``: the environment's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str = Field(pattern=r"^https?://\S+$")
    device_id: str
    trusted_keys: tuple[str, ...] = Field(min_length=1)
    threshold: int = Field(default=1, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)
    enroll_token: str | None = None
    mqtt_url: str | None = Field(default=None, pattern=r"^mqtts?://\S+$")
    proxy_url: str | None = Field(default=None, pattern=r"^\S+$", repr=False)  # may hold a password

    def trusted(self) -> TrustedKeys:
        """The pinned keys and threshold.

        Raises:
            ConfigError: a key is not a PEM Ed25519 public key, or the threshold exceeds the keys.
        """
        return TrustedKeys.of((PublicKey.from_pem(pem.encode()) for pem in self.trusted_keys), self.threshold)

    @classmethod
    def load(cls, data_dir: Path) -> AgentConfig | None:
        """The saved configuration, or ``None`` before the first run.

        Raises:
            ConfigError: ``bad_agent_config`` when the file is unreadable.
        """
        path = data_dir / AGENT_CONFIG
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            msg = f"{path} is unreadable: {exc}"
            raise ConfigError(msg, code="bad_agent_config") from None

    def save(self, data_dir: Path) -> None:
        """Write ``agent.json`` atomically, mode 0600."""
        write_private(data_dir / AGENT_CONFIG, self.model_dump_json(indent=1).encode())


class AgentState(BaseModel):
    """What the loop remembers between steps and restarts."""

    model_config = ConfigDict(extra="ignore")

    status: EnrollStatus = "new"
    etag: str | None = None
    desired: tuple[DesiredModel, ...] = ()
    poll_seconds: int | None = None
    last_checkin: datetime | None = None
    last_error: str | None = None
    clock_offset_s: float = 0.0

    @classmethod
    def load(cls, data_dir: Path) -> AgentState:
        """The saved state (a fresh one when missing or unreadable: it is only a cache)."""
        try:
            return cls.model_validate_json((data_dir / STATE_FILE).read_bytes())
        except (OSError, ValidationError):
            return cls()

    def save(self, data_dir: Path) -> None:
        """Write ``state.json`` atomically."""
        write_private(data_dir / STATE_FILE, self.model_dump_json(indent=1).encode())


@dataclass(frozen=True, slots=True)
class StepResult:
    """How one step ended and when the next should run.

    Attributes:
        ok: the server was reached and everything due was done.
        delay_s: seconds to wait before the next step.
        status: the enrollment status after the step.
        stopped: the device is revoked; the loop ends.
        error: what failed, if anything.
        sent_events: events the server acknowledged in this step.
        sent_summaries: summaries the server acknowledged in this step.
    """

    ok: bool
    delay_s: float
    status: EnrollStatus
    stopped: bool = False
    error: str | None = None
    sent_events: int = 0
    sent_summaries: int = 0


class _OffsetClock:
    """The agent's clock corrected by the offset learned from the server's ``Date`` header."""

    def __init__(self, clock: Clock, offset_s: float) -> None:
        self._clock, self.offset_s = clock, offset_s

    def now(self) -> datetime:
        return self._clock.now() + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return self._clock.monotonic()


def default_profile(data_dir: Path, tags: dict[str, str] | None = None) -> DeviceProfile:
    """This machine as a device: architecture, ONNX Runtime version, memory, free disk, tags.

    The runtime's version comes from the installed package's metadata: importing ONNX Runtime
    to ask would cost the idle agent tens of megabytes.
    """
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    data_dir.mkdir(parents=True, exist_ok=True)
    free = disk_free(data_dir) // _DISK_QUANTUM * _DISK_QUANTUM
    return DeviceProfile(
        arch=platform.machine(),
        runtimes={"onnxruntime": importlib.metadata.version("onnxruntime")},
        ram_bytes=max(ram, 0),
        disk_free_bytes=free,
        tags=dict(tags or {}),
    )


class Agent(Closeable):
    """The device agent of one data directory.

    Args:
        data_dir: where identity, state, outbox and models live.
        config: server, trust anchors, tags (see :class:`AgentConfig`).
        profile: what the device is (this machine by default).
        clock: wall and monotonic time.
        client: the API client (one for ``config.server`` by default).
        proxy: the HTTP proxies of the default client (none unless given: ``python -m modelfleet.agent``
            reads them with :func:`modelfleet.config.load_proxy_settings`).
        download: download bounds.
        health: health check settings.
        predictor: an application's predictor whose summaries and events the agent forwards.
        rng: randomness of the backoff jitter.
        backoff_base_s: first backoff ceiling after a failure; it doubles per failure.
        backoff_cap_s: largest backoff (never more than the poll interval).
        batch_size: items per telemetry or event request.
        max_batches: batches per kind sent in one step (the rest waits for the next).
        wake_min_interval_s: least time between a step and the next one a wake-up triggers.
    """

    def __init__(
        self,
        data_dir: Path,
        config: AgentConfig,
        *,
        profile: DeviceProfile | None = None,
        clock: Clock | None = None,
        client: DeviceClient | None = None,
        proxy: ProxySettings | None = None,
        download: DownloadPolicy | None = None,
        health: HealthPolicy | None = None,
        predictor: Predictor | None = None,
        rng: random.Random | None = None,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        batch_size: int = MAX_BATCH,
        max_batches: int = 20,
        wake_min_interval_s: float = 1.0,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.identity = DeviceIdentity.load_or_create(data_dir, config.device_id)
        self.credentials = CredentialFile(data_dir)
        self.state = AgentState.load(data_dir)
        self._clock = _OffsetClock(clock or SystemClock(), self.state.clock_offset_s)
        self.profile = profile or default_profile(data_dir, config.tags)
        self._transport = HttpTransport(proxies=proxy) if client is None else None
        self.client = client or DeviceClient(config.server, transport=self._transport)
        self.client.credential = self.credentials.load()
        self.outbox = Outbox(data_dir / OUTBOX_FILE)
        self.predictor: Predictor | None = None
        self._http = self.client.downloads()
        policy = download or DownloadPolicy()
        install = InstallConfig(
            trusted=config.trusted(), device=self.profile, download=policy, health=health or HealthPolicy()
        )
        downloader = Downloader(policy, client=self._http)
        self.installer = Installer(data_dir, install, sink=self._queue_event, clock=self._clock, downloader=downloader)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._batch = max(1, min(batch_size, MAX_BATCH))
        self._max_batches = max_batches
        self._failures = 0
        self._resumed = False
        self._woken = threading.Event()
        self._wake_floor_s = wake_min_interval_s
        self._listener = (
            WakeListener(config.mqtt_url, config.device_id, self.wake) if config.mqtt_url is not None else None
        )
        self.use_predictor(predictor)

    def close(self) -> None:
        """Release the wake-up listener, the predictor's watch, the outbox, the HTTP clients and the installer."""
        if self._listener is not None:
            self._listener.stop()
        if self.predictor is not None:
            self.predictor.observe(None)
        self.installer.close()
        self._http.close()
        self.client.close()
        if self._transport is not None:
            self._transport.close()
        self.outbox.close()

    def use_predictor(self, predictor: Predictor | None) -> None:
        """Forward this predictor's telemetry and watch its calls (the previous one's is collected first).

        An application that rebuilds its predictor after a switch hands the new one here, so
        the first live inferences of a version on trial are counted.
        """
        old, self.predictor = self.predictor, None
        if old is not None:
            old.observe(None)
            for summary in old.flush(self._clock.now(), final=True):
                self.outbox.add_summary(summary)
            for event in old.drain_events():
                self.outbox.add_event(event)
        if predictor is not None:
            predictor.observe(self._live_inference)
        self.predictor = predictor

    def _live_inference(self, model: str, version: str, failed: bool) -> None:
        """One call the application's predictor served: count it for a trial, and act on a verdict at once."""
        if self.installer.observe_live(model, failed, version=version):
            self.wake()

    def _queue_event(self, event: Event) -> None:
        self.outbox.add_event(event)

    # ------------------------------------------------------------ the loop

    def run_forever(self, stop: threading.Event) -> StepResult | None:
        """Step until ``stop`` is set or the device is revoked; returns the last step's result.

        Listens for MQTT wake-ups while it runs when ``mqtt_url`` is configured.
        """
        if self._listener is not None:
            self._listener.start()
        result = None
        while not stop.is_set():
            result = self.step()
            if result.stopped:
                logger.error("device %s stopped: %s", self.identity.device_id, result.error)
                return result
            self._pause(result.delay_s, stop)
        return result

    def wake(self) -> None:
        """Ask for a check-in now instead of at the next poll (thread-safe; repeated calls coalesce)."""
        self._woken.set()

    @property
    def wake_listener(self) -> WakeListener | None:
        """The MQTT wake-up listener, when a broker is configured."""
        return self._listener

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        """Wait ``seconds``, or less when woken (but at least the wake floor), or until ``stop``."""
        started = time.monotonic()
        floor = min(self._wake_floor_s, seconds)
        while not stop.is_set():
            waited = time.monotonic() - started
            if waited >= seconds:
                return
            if self._woken.is_set():
                if waited >= floor:
                    self._woken.clear()
                    logger.info("woken up: checking in now")
                    return
                stop.wait(min(floor - waited, _STOP_SLICE_S))
            else:
                self._woken.wait(min(seconds - waited, _STOP_SLICE_S))

    def step(self) -> StepResult:
        """One iteration: enroll if needed, check in, install, forward telemetry. Never sleeps."""
        if self.state.status == "revoked":
            return self._result(ok=False, stopped=True, error="the device is revoked")
        try:
            if not self._resumed:
                self.installer.resume()  # finish installs a crash interrupted, re-queue their events
                self._resumed = True
            self._collect()
            self.installer.settle_trials()  # a trial's deadline and verdicts do not wait for the server
            if self.client.credential is None and not self._enroll():
                return self._done(ok=True)  # pending an admin's approval: ask again next poll
            self._checkin()
            sent = self._drain()
        except CredentialRejectedError as exc:
            return self._rejected(exc)
        except PermissionDeniedError as exc:
            return self._revoked(exc)
        except (TransportError, ModelfleetError, OSError) as exc:
            return self._failed(exc)
        return self._done(ok=True, sent=sent)

    # ------------------------------------------------------------ enroll

    def _enroll(self) -> bool:
        """Enroll; ``True`` when accepted. A clock-skew refusal corrects the clock and tries once more."""
        for _ in range(2):
            request = self.identity.enroll_request(self.profile, self._clock, self.config.enroll_token)
            try:
                answer = self.client.enroll(request)
            except ClockSkewError as exc:
                if exc.server_time is None:
                    raise
                self._clock.offset_s += (exc.server_time - request.issued_at).total_seconds()
                self.state.clock_offset_s = self._clock.offset_s
                logger.warning("clock is %.0f s off the server's; correcting", self._clock.offset_s)
                continue
            self.state.poll_seconds = answer.poll_seconds
            if answer.status == "accepted" and answer.credential:
                self.credentials.save(answer.credential)
                self.state.status = "accepted"
                logger.info("device %s enrolled", self.identity.device_id)
                return True
            self.state.status = "pending"
            return False
        raise ClockSkewError("the server refused the enrollment time twice")

    # ------------------------------------------------------------ check-in and installs

    def _checkin(self) -> None:
        request = CheckinRequest(inventory=self.profile, installed=tuple(self.installed()))
        answer = self.client.checkin(request, self.state.etag)
        self.state.last_checkin = self._clock.now()
        if answer is not None:
            self.state.etag = self.client.last_etag
            self.state.desired = answer.desired
            self.state.poll_seconds = answer.poll_seconds
        self.state.save(self.data_dir)
        for desired in self.state.desired:
            self._install(desired)
            self._follow_candidate(desired)
        named = {desired.model for desired in self.state.desired}
        for model in self.installer.slots.models():
            if model not in named:
                self.installer.drop_candidate(model)

    def _follow_candidate(self, desired: DesiredModel) -> None:
        """Stage the candidate a shadow or time slice names once the active version runs; drop one no longer named."""
        if desired.candidate is None:
            self.installer.drop_candidate(desired.model)
            return
        slots = self.installer.slots
        journal = self.installer.journal(desired.model)
        settled = journal.state.value in {"committed", "rolled_back", "failed", "idle"}
        if slots.link(desired.model, CURRENT) != f"{desired.version}-{desired.artifact.sha256[:12]}" or not settled:
            return  # the active version first: a candidate runs beside what the experiment compares it with
        try:
            self.installer.stage_candidate(desired)
        except BadDataError as exc:
            logger.error(  # noqa: TRY400 - the reason is the message, no traceback
                "cannot stage candidate of %s: %s", desired.model, exc.message
            )

    def serving(self, model: str) -> Serving | None:
        """What the application's Predictor should run for ``model`` now; ``None`` when nothing is installed.

        Compare with what it runs after each step, and build a new Predictor (:func:`open_served`) on a change.
        """
        slots = self.installer.slots
        current = slots.link(model, CURRENT)
        if current is None:
            return None
        record = self.installer.candidate(model)
        if (
            record is None
            or record.state != "ready"
            or record.slot == current
            or slots.link(model, CANDIDATE) != record.slot
        ):
            return Serving(model, current)
        return Serving(model, current, record.slot, record.mode, record.time_slice)

    def _install(self, desired: DesiredModel) -> None:
        """Hand a desired model to the installer unless it runs already; failures end up in events."""
        slots = self.installer.slots
        if slots.link(desired.model, CURRENT) == f"{desired.version}-{desired.artifact.sha256[:12]}":
            journal = self.installer.journal(desired.model)
            if journal.target is None or journal.state.value in {"committed", "rolled_back", "failed", "idle"}:
                return
        try:
            journal = self.installer.assign(desired)
        except BadDataError as exc:
            logger.error(  # noqa: TRY400 - the reason is the message, no traceback
                "cannot install %s %s: %s", desired.model, desired.version, exc.message
            )
            return
        logger.info("%s %s: %s", desired.model, desired.version, journal.state.value)

    def installed(self) -> list[InstalledModel]:
        """What runs (or is being installed) per model, as the check-in reports it."""
        return installed_models(self.installer.slots)

    # ------------------------------------------------------------ telemetry

    def _collect(self) -> None:
        """Move the predictor's finished summaries and its events into the outbox."""
        if self.predictor is None:
            return
        for summary in self.predictor.flush(self._clock.now()):
            self.outbox.add_summary(summary)
        for event in self.predictor.drain_events():
            self.outbox.add_event(event)

    def _drain(self) -> tuple[int, int]:
        """Send pending events, then summaries, in batches; mark each batch sent once acknowledged."""
        return self._drain_kind("event"), self._drain_kind("summary")

    def _drain_kind(self, kind: OutboxKind) -> int:
        sent = 0
        for _ in range(self._max_batches):
            items = self.outbox.pending(self._batch, kind)
            if not items:
                break
            try:
                sent += self._send(kind, [item.body for item in items])
            except BadDataError as exc:
                sent += self._send_singly(kind, [item.body for item in items], exc)
            self.outbox.mark_sent(item.id for item in items)
        return sent

    def _send(self, kind: OutboxKind, bodies: list[str]) -> int:
        if kind == "event":
            result = self.client.send_events(EventBatch(events=tuple(Event.model_validate_json(b) for b in bodies)))
        else:
            summaries = tuple(Summary.model_validate_json(b) for b in bodies)
            result = self.client.send_telemetry(TelemetryBatch(summaries=summaries))
        return result.accepted + result.duplicates

    def _send_singly(self, kind: OutboxKind, bodies: list[str], error: BadDataError) -> int:
        """A refused batch: send item by item so one bad item does not block the rest (it is dropped)."""
        logger.warning("server refused a batch of %d %ss (%s); sending them one by one", len(bodies), kind, error)
        sent = 0
        for body in bodies:
            try:
                sent += self._send(kind, [body])
            except BadDataError as exc:
                logger.error(  # noqa: TRY400 - the reason is the message, no traceback
                    "server refused %s %s, dropping it: %s", kind, body[:120], exc.message
                )
        return sent

    # ------------------------------------------------------------ outcomes

    def _rejected(self, error: CredentialRejectedError) -> StepResult:
        """The credential is gone: forget it and enroll again at once (a revoked device is refused: stop)."""
        logger.warning("credential rejected (%s); enrolling again", error.message)
        self.credentials.clear()
        self.client.credential = None
        self.state.status = "new"
        self.state.etag = None
        try:
            if self._enroll():
                return self._done(ok=True)
        except PermissionDeniedError as exc:
            return self._revoked(exc)
        except ModelfleetError as exc:
            return self._failed(exc)
        return self._done(ok=True)

    def _revoked(self, error: PermissionDeniedError) -> StepResult:
        self.credentials.clear()
        self.client.credential = None
        self.state.status = "revoked"
        self.state.last_error = error.message
        self.state.save(self.data_dir)
        return self._result(ok=False, stopped=True, error=error.message)

    def _failed(self, error: ModelfleetError | OSError) -> StepResult:
        text = error.message if isinstance(error, ModelfleetError) else str(error)
        self._failures += 1
        self.state.last_error = text
        self.state.save(self.data_dir)
        base, cap = self._backoff
        delay = backoff_delay(self._failures - 1, self._rng, base, min(cap, self._poll()))
        logger.warning("step failed (%s); next try in %.1f s", text, delay)
        return self._result(ok=False, delay_s=delay, error=text)

    def _done(self, *, ok: bool, sent: tuple[int, int] = (0, 0)) -> StepResult:
        self._failures = 0
        self.state.last_error = None
        self.state.save(self.data_dir)
        return self._result(ok=ok, delay_s=float(self._poll()), sent=sent)

    def _poll(self) -> int:
        return self.state.poll_seconds or 300

    def _result(
        self,
        *,
        ok: bool,
        delay_s: float = 0.0,
        stopped: bool = False,
        error: str | None = None,
        sent: tuple[int, int] = (0, 0),
    ) -> StepResult:
        return StepResult(ok, delay_s, self.state.status, stopped, error, sent[0], sent[1])


def installed_models(slots: SlotStore) -> list[InstalledModel]:
    """Per model: the current version and release, the journal state, the previous version, what the agent runs.

    ``delta_formats`` are the delta formats this agent applies, so the server offers no delta it would refuse.
    """
    models = []
    for model in slots.models():
        journal = JournalFile(slots.model_dir(model) / "journal.json").load()
        current = slots.current(model)
        previous = slots.link(model, PREVIOUS)
        models.append(
            InstalledModel(
                model=model,
                version=current.manifest().version if current else None,
                release=current.manifest().release if current else None,
                state=journal.state.value if journal else "idle",
                previous_version=previous.rsplit("-", 1)[0] if previous else None,
                modes=EXPERIMENT_MODES,
                delta_formats=DELTA_READABLE_VERSIONS,
            )
        )
    return models


def _candidate_status(data_dir: Path, model: str) -> dict[str, Any] | None:
    """The shadow or time-slice candidate beside a model, as ``agent status`` shows it."""
    record = CandidateFile(SlotStore(data_dir).model_dir(model) / CANDIDATE_FILE).load()
    if record is None:
        return None
    return {"version": record.version, "mode": record.mode, "state": record.state, "reason": record.reason}


def agent_status(data_dir: Path) -> dict[str, Any]:
    """What ``agent status`` shows: identity, enrollment, server, models, outbox (read only, no network)."""
    config = AgentConfig.load(data_dir)
    identity = DeviceIdentity.load(data_dir)
    state = AgentState.load(data_dir)
    models: dict[str, Any] = {}
    slots_root = data_dir / "models"
    if slots_root.is_dir():
        slots = SlotStore(data_dir)
        for entry in installed_models(slots):
            journal = JournalFile(slots.model_dir(entry.model) / "journal.json").load()
            models[entry.model] = {
                "current": entry.version,
                "release": entry.release,
                "previous": entry.previous_version,
                "state": entry.state,
                "target": journal.target.version if journal and journal.target else None,
                "last_error": journal.reason if journal else None,
                "failed": [f.version for f in journal.failed] if journal else [],
                "download_retries": journal.retries if journal else 0,
                "retry_after": journal.retry_after.isoformat() if journal and journal.retry_after else None,
                "candidate": _candidate_status(data_dir, entry.model),
            }
    outbox: dict[str, Any] = {"pending_events": 0, "pending_summaries": 0, "sent": 0, "dropped": {}}
    if (data_dir / OUTBOX_FILE).exists():
        with Outbox(data_dir / OUTBOX_FILE) as box:
            counts = box.counts()
            outbox = {
                "pending_events": len(box.pending(MAX_BATCH * 100, "event")),
                "pending_summaries": len(box.pending(MAX_BATCH * 100, "summary")),
                "sent": counts.sent,
                "dropped": counts.dropped,
            }
    enrolled = CredentialFile(data_dir).load() is not None
    return {
        "data_dir": str(data_dir),
        "device_id": identity.device_id if identity else (config.device_id if config else None),
        "server": config.server if config else None,
        "enrolled": enrolled,
        "status": state.status,
        "last_checkin": state.last_checkin.isoformat() if state.last_checkin else None,
        "last_error": state.last_error,
        "models": models,
        "outbox": outbox,
    }
