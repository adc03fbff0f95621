"""Wire schemas of the device API (ADR 0003), shared by the agent and the server.

Every request model forbids unknown fields and bounds every collection, so a
malformed or oversized body is a 422 naming the field, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    model_serializer,
    model_validator,
)

from modelfleet.bundle import DeviceProfile, canonical_bytes
from modelfleet.telemetry import Event, Summary

__all__ = [
    "ENROLL_CONTEXT",
    "EXPERIMENT_MODES",
    "MAX_BATCH",
    "MAX_DELTA_FORMATS",
    "UNREPORTED_DELTA_FORMATS",
    "WAKE_QOS",
    "Artifact",
    "Candidate",
    "CheckinRequest",
    "CheckinResponse",
    "DesiredModel",
    "EnrollRequest",
    "EnrollResponse",
    "EventBatch",
    "IngestResult",
    "InstalledModel",
    "MqttEndpoint",
    "TelemetryBatch",
    "TimeSlice",
    "ed25519_public_key",
    "enrollment_message",
    "wake_topic",
]

ENROLL_CONTEXT = b"modelfleet/enroll/v1\x00"
MAX_BATCH = 500
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{2,127}$"
_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_SHA256 = r"^[0-9a-f]{64}$"

InstallState = Literal[
    "idle",
    "downloading",
    "verifying",
    "staged",
    "switching",
    "trial",
    "committed",
    "rolling_back",
    "rolled_back",
    "failed",
]
Mode = Literal["active", "shadow", "time_slice"]
EXPERIMENT_MODES: tuple[Mode, ...] = ("active", "shadow", "time_slice")
"""What an agent of this release runs, reported per installed model (ADR 0003, addendum)."""

UNREPORTED_DELTA_FORMATS: tuple[int, ...] = (1,)
"""The delta formats the server assumes of an agent that reports none: format 1 (ADR 0010, addendum)."""
MAX_DELTA_FORMATS = 16


def ed25519_public_key(value: str) -> str:
    """Validate a base64 raw Ed25519 public key (32 bytes); return it unchanged."""
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        msg = "public_key must be base64"
        raise ValueError(msg) from None
    if len(raw) != 32:  # noqa: PLR2004 - Ed25519 public keys are 32 bytes
        msg = f"public_key must hold 32 bytes (Ed25519), got {len(raw)}"
        raise ValueError(msg)
    return value


def _at_most(limit: int, what: str = "items per batch") -> BeforeValidator:
    """Refuse an oversized array before pydantic validates each item (bounded work per request)."""

    def check(value: object) -> object:
        if isinstance(value, list | tuple) and len(value) > limit:
            msg = f"at most {limit} {what}, got {len(value)}"
            raise ValueError(msg)
        return value

    return BeforeValidator(check)


def _distinct(values: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(values)) != len(values):
        msg = f"each version at most once, got {list(values)}"
        raise ValueError(msg)
    return values


_DeltaFormats = Annotated[
    tuple[Annotated[StrictInt, Field(ge=1, le=255)], ...],  # the .mfd header's version byte
    _at_most(MAX_DELTA_FORMATS, "delta format versions"),
    AfterValidator(_distinct),
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class EnrollRequest(_Wire):
    """A device asks to join: its id, its own public key, proof it holds the private key."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key: Annotated[str, Field(max_length=64), AfterValidator(ed25519_public_key)]
    issued_at: datetime
    enroll_token: str | None = Field(default=None, max_length=256)
    inventory: DeviceProfile
    proof: str = Field(max_length=128)


def enrollment_message(request: EnrollRequest) -> bytes:
    """The bytes a device signs to prove it holds the key it enrolls with."""
    body = {
        "device_id": request.device_id,
        "public_key": request.public_key,
        "issued_at": request.issued_at.isoformat(),
        "enroll_token": request.enroll_token,
    }
    return ENROLL_CONTEXT + canonical_bytes(body)


class EnrollResponse(_Wire):
    """Accepted (with a credential, shown once) or pending an admin's approval."""

    status: Literal["accepted", "pending"]
    device_id: str
    credential: str | None = None
    poll_seconds: int


class InstalledModel(_Wire):
    """What a device runs (or is installing) for one model, and what the agent can do with it.

    ``modes``: the experiment kinds the agent runs beside it (ADR 0003, addendum).
    ``delta_formats``: the ``.mfd`` format versions the agent applies to it; the server offers
    a delta only in one of them, none when the list is empty (ADR 0010, addendum).
    """

    model: str = Field(pattern=_NAME)
    version: str | None = Field(default=None, max_length=128)
    release: int | None = Field(default=None, ge=0)
    state: InstallState = "idle"
    previous_version: str | None = Field(default=None, max_length=128)
    modes: tuple[Mode, ...] = Field(default=("active",), max_length=3)
    delta_formats: _DeltaFormats = Field(default=UNREPORTED_DELTA_FORMATS, max_length=MAX_DELTA_FORMATS)

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """An agent that runs only ``active`` and reads delta format 1 only reports what agents before these did."""
        data: dict[str, object] = handler(self)
        if self.modes == ("active",):
            data.pop("modes", None)
        if self.delta_formats == UNREPORTED_DELTA_FORMATS:
            data.pop("delta_formats", None)
        return data


class CheckinRequest(_Wire):
    """A device's periodic report of what it is and runs."""

    inventory: DeviceProfile
    installed: tuple[InstalledModel, ...] = Field(default=(), max_length=64)


class Artifact(_Wire):
    """Where to download a bundle and what it must hash to."""

    url: str
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)


class TimeSlice(_Wire):
    """A device's time-slice schedule: which version serves each slot of ``slot_seconds`` (from the epoch).

    Slots run in blocks of four: ``order``, then ``order`` reversed (ABBA or BAAB), the
    rotation :func:`modelfleet.stats.time_slice_schedule` gives the device, so a linear
    trend cancels within every block. Index 0 is the active version, 1 the candidate.
    """

    slot_seconds: int = Field(ge=1, le=86_400)
    order: tuple[int, int]

    @model_validator(mode="after")
    def _permutation(self) -> TimeSlice:
        if sorted(self.order) != [0, 1]:
            msg = f"order must be (0, 1) or (1, 0), got {self.order}"
            raise ValueError(msg)
        return self

    def slot(self, at: datetime) -> int:
        """The slot ``at`` falls in (slots count from the epoch, so every device and the server agree)."""
        return math.floor(at.timestamp() / self.slot_seconds)

    def version_at(self, at: datetime) -> int:
        """Which version serves at ``at``: 0 (active) or 1 (candidate)."""
        block = (*self.order, *reversed(self.order))
        return block[self.slot(at) % len(block)]


class Candidate(_Wire):
    """The version a shadow or time-slice experiment runs next to the active one; it never becomes current."""

    version: str = Field(max_length=128)
    release: int = Field(ge=0)
    artifact: Artifact
    time_slice: TimeSlice | None = None


class DesiredModel(_Wire):
    """What the server wants a device to run for one model.

    ``mode`` other than ``active`` comes with a ``candidate``: keep running ``version``
    and run the candidate beside it (``shadow``: on the same inputs, answers only
    recorded; ``time_slice``: serving the slots its schedule gives it).
    """

    model: str
    version: str
    release: int
    mode: Mode = "active"
    rollback: bool = False
    rollout_id: str | None = None
    experiment_id: str | None = None
    artifact: Artifact
    delta: Artifact | None = None
    candidate: Candidate | None = None

    @model_validator(mode="after")
    def _candidate_with_mode(self) -> DesiredModel:
        if (self.mode == "active") != (self.candidate is None):
            msg = f"mode {self.mode!r} {'takes no' if self.mode == 'active' else 'needs a'} candidate"
            raise ValueError(msg)
        if self.candidate is not None and (self.mode == "time_slice") != (self.candidate.time_slice is not None):
            msg = "a time_slice candidate needs its time_slice schedule, and only it has one"
            raise ValueError(msg)
        return self

    @model_serializer(mode="wrap")
    def _omit_no_candidate(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """Without a candidate the answer is the bytes it was before the field (same ETag; older agents parse it)."""
        data: dict[str, object] = handler(self)
        if self.candidate is None:
            data.pop("candidate", None)
        return data


class CheckinResponse(_Wire):
    """The desired state; its ETag lets an unchanged answer be a 304."""

    device_id: str
    desired: tuple[DesiredModel, ...]
    poll_seconds: int


class TelemetryBatch(_Wire):
    """Summaries a device sends; each id is stored once."""

    summaries: Annotated[tuple[Summary, ...], _at_most(MAX_BATCH)]


class EventBatch(_Wire):
    """Events a device sends; each id is stored once."""

    events: Annotated[tuple[Event, ...], _at_most(MAX_BATCH)]


class IngestResult(_Wire):
    """How many items were new and how many had arrived before."""

    accepted: int
    duplicates: int


# ------------------------------------------------------------ MQTT wake-up (optional)

WAKE_QOS = 1
"""At-least-once: a wake-up that arrives twice only costs one more check-in."""


def wake_topic(device_id: str) -> str:
    """The MQTT topic the server publishes to and the device subscribes to: ``modelfleet/devices/<id>/wake``.

    Device ids never hold ``+``, ``#`` or ``/`` (``DEVICE_ID_PATTERN``), so the topic has no wildcard.
    """
    return f"modelfleet/devices/{device_id}/wake"


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where an MQTT broker is: ``mqtt://[user[:password]@]host[:port]`` (1883) or ``mqtts://`` (TLS, 8883)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> MqttEndpoint:
        """Parse a broker URL.

        Raises:
            ValueError: not an ``mqtt://`` or ``mqtts://`` URL with a host (a caller's config error).
        """
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname or port == -1 or parts.path not in {"", "/"}:
            msg = f"{url!r} is not a broker URL like mqtt://host:1883 or mqtts://host:8883"
            raise ValueError(msg)
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
