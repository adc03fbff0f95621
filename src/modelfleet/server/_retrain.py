"""Drift checks and retraining triggers: the periodic job, its settings, and the ``retrain.requested`` notifier.

:func:`check_drift` runs the monitor (:mod:`modelfleet.rollout._drift`) for
every registered version with recent summaries, writes ``drift.evaluated`` to
the audit log each time and ``retrain.requested`` once per episode: after a
request, the same (model, version) is not requested again until its share has
dropped below the threshold (``drift.cleared``). The audit log is the only
state, so a restarted server or another replica carries on where this one
stopped; on PostgreSQL the claim is serialized per version by an advisory lock.

The event goes to a webhook (JSON POST, HMAC-SHA256 signed, retried with
exponential backoff and full jitter up to a bound) and/or a command (event JSON
on stdin, bounded time). The outcome is recorded as ``retrain.delivered``, or,
when every delivery failed, as ``retrain.delivery_failed``, which re-arms the
trigger so the next run requests again. Delivery happens after the request is
committed: a process that dies in between leaves a request without an outcome
(at most once, never twice).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from modelfleet import __version__
from modelfleet.bundle import References, parse_manifest
from modelfleet.clock import Clock
from modelfleet.errors import NotFoundError
from modelfleet.rollout import (
    DriftPolicy,
    Event,
    FleetDrift,
    VersionComparison,
    compare_with_parent,
    evaluate_drift,
    run_command,
)
from modelfleet.store import (
    RecentSummaries,
    RolloutRow,
    append_audit,
    find_bundle,
    last_audit_action,
    recent_summaries,
    session_factory,
    versions_with_summaries,
)

__all__ = [
    "ACTOR",
    "CLEARED",
    "DELIVERED",
    "DELIVERY_FAILED",
    "EVALUATED",
    "EVENT",
    "SIGNATURE_HEADER",
    "DeliveryResult",
    "DriftCheck",
    "DriftSettings",
    "RetrainNotifier",
    "VersionDrift",
    "check_drift",
    "monitor_version",
    "retrain_event",
    "sign_body",
    "verify_signature",
]

log = logging.getLogger(__name__)

EVENT = "retrain.requested"
ACTOR = "drift-monitor"
SIGNATURE_HEADER = "X-Modelfleet-Signature-256"
EVALUATED, CLEARED = "drift.evaluated", "drift.cleared"
DELIVERED, DELIVERY_FAILED = "retrain.delivered", "retrain.delivery_failed"
_EPISODE = (EVENT, CLEARED, DELIVERY_FAILED)
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
_OUTPUT_TAIL = 1024
_LOCK_SALT = 0x6D66_6472_0000_0000  # "mfdr": drift claims, apart from the audit chain's lock


class DriftSettings(BaseModel):
    """How the server monitors drift and whom it tells (``drift`` in ``server.json``).

    Attributes:
        enabled: whether the periodic job runs :func:`check_drift` (the admin route works either way).
        check_seconds: how often the periodic job runs it.
        policy: when a device drifts and when the fleet needs retraining.
        lookback_seconds: only windows that started this recently are read.
        max_devices: at most this many devices per version are read per check.
        max_versions: at most this many versions are checked per run.
        webhook_url: where ``retrain.requested`` is POSTed (None: no webhook).
        webhook_secret: the HMAC-SHA256 key of the signature header; required with a webhook.
        webhook_timeout_seconds: bound on one delivery attempt.
        webhook_max_attempts: attempts before a delivery counts as failed.
        webhook_backoff_seconds: base of the exponential backoff between attempts.
        webhook_backoff_max_seconds: cap of one backoff.
        command: argv run with the event JSON on stdin (None: no command).
        command_timeout_seconds: bound on the command's run time.
        rollback_on_drift: roll back a version's running rollout when it drifts significantly more
            than its parent over the same period and tags (the decision goes to the rollout's audit trail).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    check_seconds: float = Field(default=300.0, gt=0, le=86_400)
    policy: DriftPolicy = Field(default_factory=DriftPolicy)
    lookback_seconds: int = Field(default=3600, ge=60, le=30 * 86_400)
    max_devices: int = Field(default=10_000, ge=1, le=1_000_000)
    max_versions: int = Field(default=100, ge=1, le=10_000)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=2048)
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=1024, repr=False)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_seconds: float = Field(default=1.0, ge=0, le=3600)
    webhook_backoff_max_seconds: float = Field(default=60.0, ge=0, le=3600)
    command: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=64)
    command_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    rollback_on_drift: bool = False

    @model_validator(mode="after")
    def _signed(self) -> DriftSettings:
        if self.webhook_url is not None and self.webhook_secret is None:
            msg = "a webhook_url needs a webhook_secret, so the receiver can authenticate the event"
            raise ValueError(msg)
        return self


def sign_body(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant-time; for receivers and tests)."""
    return header is not None and hmac.compare_digest(sign_body(secret, body), header)


def retrain_event(decision_evidence: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    """The ``retrain.requested`` document: event, model, version, at, evidence."""
    return {
        "event": EVENT,
        "model": decision_evidence["model"],
        "version": decision_evidence["version"],
        "at": at.isoformat(),
        "evidence": dict(decision_evidence),
    }


def _body(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _delivery_id(body: bytes) -> str:
    """Stable across retries, so a receiver can drop a delivery that arrived twice."""
    return hashlib.sha256(body).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one delivery of an event.

    Attributes:
        target: ``webhook`` or ``command``.
        delivered: the receiver accepted it (2xx) or the command exited 0.
        attempts: how many tries were made.
        status: the last HTTP status or exit code, if any.
        error: why it failed, if it did.
    """

    target: Literal["webhook", "command"]
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values for the audit log."""
        return {
            "target": self.target,
            "delivered": self.delivered,
            "attempts": self.attempts,
            "status": self.status,
            "error": self.error,
        }


class RetrainNotifier:
    """Delivers ``retrain.requested`` to the configured webhook and/or command.

    Args:
        settings: targets and bounds.
        transport: an httpx transport (default: the network).
        sleep: how to wait between attempts (inject a simulated clock's sleep).
        rng: jitter source (inject a seeded one for exact tests).
    """

    def __init__(
        self,
        settings: DriftSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security

    @property
    def configured(self) -> bool:
        """Whether there is anywhere to deliver to."""
        return self._settings.webhook_url is not None or self._settings.command is not None

    def notify(self, event: Mapping[str, Any]) -> tuple[DeliveryResult, ...]:
        """Deliver ``event`` to every configured target; failures are returned and logged, never raised."""
        body = _body(event)
        results: list[DeliveryResult] = []
        if self._settings.webhook_url is not None:
            results.append(self._post(self._settings.webhook_url, body))
        if self._settings.command is not None:
            results.append(self._run(self._settings.command, body))
        for result in results:
            if not result.delivered:
                log.error(
                    "retrain event for %s %s not delivered to %s after %d attempt(s): %s",
                    event.get("model"),
                    event.get("version"),
                    result.target,
                    result.attempts,
                    result.error,
                    extra={"model": event.get("model"), "version": event.get("version")},
                )
        return tuple(results)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt - 1))] (AWS architecture blog, 2015)."""
        s = self._settings
        return self._rng.uniform(
            0.0, min(s.webhook_backoff_max_seconds, s.webhook_backoff_seconds * 2 ** (attempt - 1))
        )

    def _post(self, url: str, body: bytes) -> DeliveryResult:
        s = self._settings
        secret = s.webhook_secret or ""  # the settings refuse a webhook without a secret
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"modelfleet/{__version__}",
            "X-Modelfleet-Event": EVENT,
            "X-Modelfleet-Delivery": _delivery_id(body),
            SIGNATURE_HEADER: sign_body(secret, body),
        }
        status: int | None = None
        error = "no attempt made"
        with httpx.Client(
            transport=self._transport, timeout=s.webhook_timeout_seconds, follow_redirects=False
        ) as client:
            for attempt in range(1, s.webhook_max_attempts + 1):
                if attempt > 1:
                    self._sleep(self._backoff(attempt - 1))
                try:
                    with client.stream("POST", url, content=body, headers=headers) as response:
                        status = response.status_code  # the body is not read: its size is the receiver's
                except httpx.HTTPError as exc:
                    status, error = None, f"{type(exc).__name__}: {exc}"
                    log.warning("webhook attempt %d failed: %s", attempt, error)
                    continue
                if 200 <= status < 300:  # noqa: PLR2004 - HTTP success class
                    return DeliveryResult("webhook", delivered=True, attempts=attempt, status=status)
                error = f"HTTP {status}"
                if status not in _RETRYABLE:
                    return DeliveryResult("webhook", delivered=False, attempts=attempt, status=status, error=error)
                log.warning("webhook attempt %d answered %d", attempt, status)
        return DeliveryResult("webhook", delivered=False, attempts=s.webhook_max_attempts, status=status, error=error)

    def _run(self, argv: Sequence[str], body: bytes) -> DeliveryResult:
        """Run the command once; its stdout is discarded and only the tail of its stderr is kept."""
        timeout = self._settings.command_timeout_seconds
        with tempfile.TemporaryFile() as stderr:
            try:
                done = subprocess.run(  # noqa: S603 - argv from the operator's config, no shell
                    list(argv), input=body, stdout=subprocess.DEVNULL, stderr=stderr, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired:
                return DeliveryResult("command", delivered=False, attempts=1, error=f"timed out after {timeout:g} s")
            except OSError as exc:
                return DeliveryResult("command", delivered=False, attempts=1, error=f"cannot run {argv[0]!r}: {exc}")
            if done.returncode == 0:
                return DeliveryResult("command", delivered=True, attempts=1, status=0)
            stderr.seek(max(0, stderr.tell() - _OUTPUT_TAIL))
            tail = stderr.read().decode("utf-8", "replace").strip()
        error = f"exit status {done.returncode}" + (f": {tail}" if tail else "")
        return DeliveryResult("command", delivered=False, attempts=1, status=done.returncode, error=error)


@dataclass(frozen=True, slots=True)
class VersionDrift:
    """The monitor's current view of one version: its result, the comparison with its parent, what was read.

    Attributes:
        result: scores, verdicts, shares and the retrain decision.
        comparison: against the parent over the same period (None without a parent or its bundle).
        parent: the parent version, if any.
        since: the oldest window read.
        at: when it was computed.
        truncated: more devices reported than ``max_devices``; the first by id were scored.
    """

    result: FleetDrift
    comparison: VersionComparison | None
    parent: str | None
    since: datetime
    at: datetime
    truncated: bool


def _references(session: Session, model: str, version: str) -> tuple[References, str | None]:
    row = find_bundle(session, model, version)
    manifest = parse_manifest(row.manifest.encode("utf-8"))
    return manifest.evidence.references, manifest.parent


def _read(engine: Engine, settings: DriftSettings, model: str, version: str, since: datetime) -> RecentSummaries:
    with engine.connect() as connection:
        return recent_summaries(
            connection,
            model=model,
            version=version,
            since=since,
            windows=settings.policy.windows,
            max_devices=settings.max_devices,
        )


def _parent_references(session: Session, model: str, parent: str | None) -> References | None:
    """The parent's references, or None when there is no parent or it was never registered here."""
    if parent is None:
        return None
    try:
        return _references(session, model, parent)[0]
    except NotFoundError:
        return None


def monitor_version(engine: Engine, settings: DriftSettings, model: str, version: str, now: datetime) -> VersionDrift:
    """Score one version's recent windows (and its parent's, for the rollback comparison).

    Raises:
        NotFoundError: the version is not registered.
    """
    since = now - timedelta(seconds=settings.lookback_seconds)
    with session_factory(engine)() as session:
        references, parent = _references(session, model, version)
        parent_references = _parent_references(session, model, parent)
    recent = _read(engine, settings, model, version, since)
    result = evaluate_drift(model, version, references, recent.devices, settings.policy)
    comparison = None
    if parent is not None and parent_references is not None:
        before = _read(engine, settings, model, parent, since)
        parent_result = evaluate_drift(model, parent, parent_references, before.devices, settings.policy)
        comparison = compare_with_parent(result, parent_result)
    return VersionDrift(result, comparison, parent, since, now, recent.truncated)


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """What one run of :func:`check_drift` did for one version.

    Attributes:
        drift: the monitor's view.
        requested: a ``retrain.requested`` was recorded (and delivered, see ``deliveries``) in this run.
        suppressed: retraining is called for but was already requested in this episode.
        cleared: the share dropped below the threshold after a request, re-arming the trigger.
        deliveries: what became of each delivery of this run's request.
    """

    drift: VersionDrift
    requested: bool
    suppressed: bool
    cleared: bool
    deliveries: tuple[DeliveryResult, ...] = ()

    @property
    def delivered(self) -> bool:
        """No configured delivery of this run's request failed."""
        return all(d.delivered for d in self.deliveries)


def _target(model: str, version: str) -> str:
    return f"{model}/{version}"


def _lock(session: Session, target: str) -> None:
    """On PostgreSQL, one claim per version at a time across replicas (SQLite has a single writer)."""
    if session.get_bind().dialect.name == "postgresql":
        key = _LOCK_SALT + zlib.crc32(target.encode("utf-8"))
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _evaluated_detail(drift: VersionDrift, *, requested: bool, suppressed: bool) -> dict[str, Any]:
    detail = drift.result.decision.evidence()
    detail |= {
        "retrain_requested": requested,
        "suppressed": suppressed,
        "truncated": drift.truncated,
        "since": drift.since.isoformat(),
        "comparison": None if drift.comparison is None else drift.comparison.evidence(),
    }
    return detail


def _record(engine: Engine, drift: VersionDrift) -> tuple[DriftCheck, dict[str, Any] | None]:
    """Write this evaluation and, once per episode, the request; return the event to deliver, if any."""
    result, at = drift.result, drift.at
    decision = result.decision
    target = _target(result.model, result.version)
    with session_factory(engine).begin() as session:
        _lock(session, target)
        outstanding = last_audit_action(session, target=target, actions=_EPISODE) == EVENT
        requested = decision.requested and not outstanding
        suppressed = decision.requested and outstanding
        enough = decision.devices >= result.policy.min_devices
        cleared = outstanding and enough and decision.share < result.policy.retrain_share
        detail = _evaluated_detail(drift, requested=requested, suppressed=suppressed)
        append_audit(session, at=at, actor=ACTOR, action=EVALUATED, target=target, detail=detail)
        event = retrain_event(decision.evidence(), at) if requested else None
        if event is not None:
            append_audit(session, at=at, actor=ACTOR, action=EVENT, target=target, detail=event)
        if cleared:
            append_audit(session, at=at, actor=ACTOR, action=CLEARED, target=target, detail={"share": decision.share})
    return DriftCheck(drift, requested=requested, suppressed=suppressed, cleared=cleared), event


def _deliver(engine: Engine, check: DriftCheck, event: Mapping[str, Any], notifier: RetrainNotifier) -> DriftCheck:
    """Deliver, then record the outcome; when every delivery failed the request is re-armed for the next run."""
    deliveries = notifier.notify(event)
    if deliveries:
        result = check.drift.result
        action = DELIVERED if any(d.delivered for d in deliveries) else DELIVERY_FAILED
        detail = {"deliveries": [d.as_json() for d in deliveries]}
        with session_factory(engine).begin() as session:
            append_audit(
                session,
                at=check.drift.at,
                actor=ACTOR,
                action=action,
                target=_target(result.model, result.version),
                detail=detail,
            )
    return DriftCheck(check.drift, check.requested, check.suppressed, check.cleared, deliveries)


def check_drift(engine: Engine, clock: Clock, settings: DriftSettings, notifier: RetrainNotifier) -> list[DriftCheck]:
    """Run the drift monitor once over every version with recent summaries; safe to run on any replica, any time.

    One version that fails (a bundle that no longer parses) is logged and skipped;
    the others are still checked.
    """
    now = clock.now()
    since = now - timedelta(seconds=settings.lookback_seconds)
    with engine.connect() as connection:
        versions = versions_with_summaries(connection, since=since, limit=settings.max_versions)
    checks: list[DriftCheck] = []
    for model, version, _parent in versions:
        try:
            drift = monitor_version(engine, settings, model, version, now)
            check, event = _record(engine, drift)
            if event is not None:
                check = _deliver(engine, check, event, notifier)
            if settings.rollback_on_drift:
                _roll_back_drifting(engine, drift, now)
        except Exception:
            log.exception("drift check of %s %s failed", model, version, extra={"model": model, "version": version})
            continue
        checks.append(check)
    return checks


DRIFT_ROLLBACK_ACTOR = "drift-monitor"
_ROLLBACK_FROM = ("lab", "canary", "awaiting_approval", "paused", "complete")


def _roll_back_drifting(engine: Engine, drift: VersionDrift, now: datetime) -> str | None:
    """Roll back the rollout of a version that drifts where its parent does not; return its id if rolled back."""
    comparison = drift.comparison
    if comparison is None or not comparison.rollback_recommended:
        return None
    result = drift.result
    with session_factory(engine).begin() as session:
        rollout_id = session.scalar(
            select(RolloutRow.id)
            .where(
                RolloutRow.model == result.model,
                RolloutRow.version == result.version,
                RolloutRow.state.in_(_ROLLBACK_FROM),
            )
            .order_by(RolloutRow.created_at.desc())
            .limit(1)
        )
        if rollout_id is None:
            return None
        reason = f"drift: {comparison.reason}"
        run_command(
            session, rollout_id, Event.ROLLBACK, actor=DRIFT_ROLLBACK_ACTOR, role="admin", now=now, reason=reason
        )
    log.warning("rolled back %s: %s", rollout_id, reason, extra={"rollout_id": rollout_id, "model": result.model})
    return rollout_id
