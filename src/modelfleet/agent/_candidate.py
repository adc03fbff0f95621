"""The candidate of a shadow or time-slice experiment: installed beside the active version, never made current.

``models/<name>/candidate`` links to the candidate's published version (so garbage
collection keeps it), and ``models/<name>/candidate.json`` records which candidate,
under which assignment, and whether it is ``ready`` or ``failed`` (a failed one is
not tried again under the same assignment). Both are written atomically; a crash
between them leaves a record without a link or a link without a record, and the
next check-in stages the candidate again (every step is idempotent).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.agent._slots import CANDIDATE, fsync_dir, replace_durably, slot_name
from modelfleet.protocol import DesiredModel, TimeSlice

__all__ = ["CandidateFile", "CandidateRecord", "CandidateState", "Serving", "assignment_of"]

logger = logging.getLogger(__name__)

CandidateState = Literal["ready", "failed"]
Mode = Literal["active", "shadow", "time_slice"]


@dataclass(frozen=True, slots=True)
class Serving:
    """What the application's Predictor should run for one model; a change means: build a new one.

    Attributes:
        model: the model.
        active: the ``current`` version's directory name.
        candidate: the candidate's directory name (shadow, time slice).
        mode: ``active``, ``shadow`` or ``time_slice``.
        time_slice: the device's schedule in ``time_slice`` mode.
    """

    model: str
    active: str
    candidate: str | None = None
    mode: Mode = "active"
    time_slice: TimeSlice | None = None


class CandidateRecord(BaseModel):
    """Which candidate runs beside the active version, how, and whether it passed its checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: str
    release: int
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    assignment: str = Field(max_length=128)
    mode: Mode
    time_slice: TimeSlice | None = None
    state: CandidateState
    reason: str | None = Field(default=None, max_length=2048)

    @classmethod
    def of(cls, desired: DesiredModel, state: CandidateState, reason: str | None = None) -> CandidateRecord:
        """The record of ``desired``'s candidate in ``state``.

        Raises:
            ValueError: ``desired`` has no candidate.
        """
        candidate = desired.candidate
        if candidate is None:
            msg = f"{desired.model} {desired.version} has no candidate"
            raise ValueError(msg)
        return cls(
            model=desired.model,
            version=candidate.version,
            release=candidate.release,
            sha256=candidate.artifact.sha256,
            assignment=assignment_of(desired),
            mode=desired.mode,
            time_slice=candidate.time_slice,
            state=state,
            reason=None if reason is None else reason[:2048],
        )

    @property
    def slot(self) -> str:
        """The candidate's version directory."""
        return slot_name(self.version, self.sha256)

    def same_candidate(self, desired: DesiredModel) -> bool:
        """Is ``desired``'s candidate this one, under the same assignment (schedule and mode may differ)."""
        candidate = desired.candidate
        return candidate is not None and (candidate.version, candidate.artifact.sha256, assignment_of(desired)) == (
            self.version,
            self.sha256,
            self.assignment,
        )

    def event_id(self, kind: str) -> str:
        """A deterministic event id: the same outcome of the same candidate is one event."""
        raw = f"{CANDIDATE}\x00{self.model}\x00{self.version}\x00{self.sha256}\x00{self.assignment}\x00{kind}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


def assignment_of(desired: DesiredModel) -> str:
    """What names a candidate's assignment: the experiment (a failed candidate is retried only under another)."""
    return desired.experiment_id or desired.rollout_id or "default"


class CandidateFile:
    """``candidate.json`` of one model: atomic load and save."""

    def __init__(self, path: Path) -> None:
        """Use the record at ``path``."""
        self.path = path

    def load(self) -> CandidateRecord | None:
        """The record, or ``None`` when there is none or it cannot be read (it is then staged again)."""
        try:
            return CandidateRecord.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            logger.warning("candidate record %s is unreadable; staging again: %s", self.path, exc.errors()[:1])
            return None

    def save(self, record: CandidateRecord) -> None:
        """Replace the record atomically and durably."""
        replace_durably(self.path, record.model_dump_json(indent=1).encode())

    def remove(self) -> None:
        """Forget the record (the experiment stopped)."""
        if self.path.exists():
            self.path.unlink()
            fsync_dir(self.path.parent)
