"""The install journal: a small JSON file per model, written atomically before each step.

It holds what is being installed (:class:`Target`), the state of the lifecycle, how
often each state was entered for this target (the loop counter that survives
restarts), where the device came from (to roll back to), the versions that failed,
how often the download failed in transit and when it may be tried again (``retries``,
``retry_after``), and the telemetry events of the current attempt so they can be re-sent after a crash
(their ids are derived from the journal, so a resend is idempotent).

A write is temp file + fsync + rename + directory fsync: after power loss the file is
the old journal or the new one, never empty or half-written. The format
(``modelfleet.journal.v1``) is described field by field in ADR 0005.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.agent._slots import replace_durably
from modelfleet.agent._update import UpdateState
from modelfleet.protocol import Artifact, DesiredModel
from modelfleet.telemetry import Event, EventKind

__all__ = ["JOURNAL_FORMAT", "FailedVersion", "Journal", "JournalFile", "Origin", "Target"]

logger = logging.getLogger(__name__)

JOURNAL_FORMAT: Literal["modelfleet.journal.v1"] = "modelfleet.journal.v1"
MAX_FAILED = 64
_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_SHA256 = r"^[0-9a-f]{64}$"
_SEMVER = r"^[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.+-]*)?$"  # what telemetry events accept


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Record):
    """One assignment: the bundle to install and how the server asked for it."""

    model: str = Field(pattern=_NAME)
    version: str = Field(max_length=128, pattern=_SEMVER)
    release: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)
    url: str = Field(min_length=1, max_length=4096)
    rollback: bool = False
    assignment: str = Field(min_length=1, max_length=128)
    delta: Artifact | None = None  # offered by the server: rebuilds this bundle from the running version

    @property
    def slot(self) -> str:
        """The content-addressed directory name of this version: ``<version>-<sha256[:12]>``."""
        return f"{self.version}-{self.sha256[:12]}"

    @classmethod
    def from_desired(cls, desired: DesiredModel, nonce: str | None = None) -> Target:
        """The target of a desired model; ``nonce`` (else rollout or experiment id) names the assignment."""
        assignment = nonce or desired.rollout_id or desired.experiment_id or "default"
        return cls(
            model=desired.model,
            version=desired.version,
            release=desired.release,
            sha256=desired.artifact.sha256,
            size=desired.artifact.size,
            url=desired.artifact.url,
            rollback=desired.rollback,
            assignment=assignment,
            delta=desired.delta,
        )


class FailedVersion(_Record):
    """A version that failed under one assignment; it is not retried unless assigned again."""

    version: str
    sha256: str
    assignment: str
    reason: str = Field(max_length=2048)


class Origin(_Record):
    """What ``current`` and ``previous`` pointed at when the install started (the rollback target)."""

    current: str | None = None
    previous: str | None = None


class Journal(_Record):
    """The persisted lifecycle of one model."""

    format: Literal["modelfleet.journal.v1"] = JOURNAL_FORMAT
    model: str = Field(pattern=_NAME)
    state: UpdateState = UpdateState.IDLE
    attempt: int = Field(default=0, ge=0)
    target: Target | None = None
    origin: Origin = Field(default_factory=Origin)
    visits: dict[UpdateState, int] = Field(default_factory=dict)
    reason: str | None = Field(default=None, max_length=2048)
    code: str | None = Field(default=None, max_length=128)
    failed: tuple[FailedVersion, ...] = Field(default=(), max_length=MAX_FAILED)
    events: tuple[Event, ...] = Field(default=(), max_length=32)
    clock_floor: datetime | None = None
    retries: int = Field(default=0, ge=0)
    retry_after: datetime | None = None
    delivery: dict[str, str | int] = Field(default_factory=dict, max_length=8)  # how the bundle arrived (delta?)

    def entering(self, state: UpdateState) -> Journal:
        """This journal moved to ``state``, with that state's visit counter raised by one."""
        visits = {**self.visits, state: self.visits.get(state, 0) + 1}
        return self.model_copy(update={"state": state, "visits": visits})

    def visited(self, state: UpdateState) -> int:
        """How often ``state`` was entered (or resumed) for the current target."""
        return self.visits.get(state, 0)

    def started(self, target: Target, origin: Origin) -> Journal:
        """A fresh attempt at ``target``: counters, reason and events reset, failures kept."""
        return self.model_copy(
            update={
                "attempt": self.attempt + 1,
                "target": target,
                "origin": origin,
                "visits": {},
                "reason": None,
                "code": None,
                "events": (),
                "retries": 0,
                "retry_after": None,
                "delivery": {},
            }
        )

    def has_failed(self, target: Target) -> bool:
        """Did this exact version fail under this same assignment before."""
        return any(
            (f.version, f.sha256, f.assignment) == (target.version, target.sha256, target.assignment)
            for f in self.failed
        )

    def with_failure(self, reason: str) -> Journal:
        """Remember that the current target failed, keeping the newest :data:`MAX_FAILED` entries."""
        if self.target is None or self.has_failed(self.target):
            return self
        entry = FailedVersion(
            version=self.target.version,
            sha256=self.target.sha256,
            assignment=self.target.assignment,
            reason=reason[:2048],
        )
        return self.model_copy(update={"failed": (*self.failed, entry)[-MAX_FAILED:]})

    def event_id(self, kind: EventKind, occasion: str = "") -> str:
        """A deterministic event id: the same step of the same attempt always gets the same id.

        ``occasion`` tells apart events of one kind within an attempt (the n-th transport retry).
        """
        target = self.target
        parts = (self.model, target.version, target.sha256, target.assignment) if target else (self.model,)
        raw = "\x00".join((*parts, str(self.attempt), kind, *((occasion,) if occasion else ())))
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_bytes(self) -> bytes:
        """Serialize as JSON."""
        return self.model_dump_json(indent=1).encode()


class JournalFile:
    """Where one model's journal lives, and its atomic load and save.

    Args:
        path: the journal file (``models/<name>/journal.json``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Journal | None:
        """Return the saved journal; ``None`` when there is none or it cannot be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Journal.model_validate_json(data)
        except ValidationError as exc:
            # Only a bug or a disk that lies about fsync gets here; starting over beats refusing to run.
            logger.warning("journal %s is unreadable, starting from idle: %s", self.path, exc.errors()[:1])
            return None

    def save(self, journal: Journal) -> None:
        """Replace the journal atomically and durably."""
        replace_durably(self.path, journal.to_bytes())
