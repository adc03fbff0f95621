"""Request and response bodies of the admin API (the device API uses ``modelfleet.protocol``).

Requests forbid unknown fields and bound every string and collection, like the
wire schemas; responses are built from store rows with ``from_attributes``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from modelfleet.protocol import DEVICE_ID_PATTERN, ed25519_public_key
from modelfleet.store import AdminRole, BundleRow, Device

__all__ = [
    "MODEL_NAME",
    "AliasChangeOut",
    "AliasIn",
    "AliasOut",
    "AuditOut",
    "BundleDetail",
    "BundleOut",
    "DeliveryOut",
    "DeviceOut",
    "DeviceTagsIn",
    "EnrollmentTokenIn",
    "EnrollmentTokenOut",
    "EventOut",
    "LineageEntry",
    "LineageOut",
    "ModelOut",
    "PinIn",
    "PinOut",
    "PreauthorizationIn",
    "PreauthorizationOut",
    "TokenIn",
    "TokenOut",
    "YankIn",
]

MODEL_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_TAG_KEY = Annotated[str, Field(min_length=1, max_length=128)]
_TAG_VALUE = Annotated[str, Field(max_length=256)]
Tags = dict[_TAG_KEY, _TAG_VALUE]
ModelName = Annotated[str, Field(pattern=MODEL_NAME)]
VersionText = Annotated[str, Field(min_length=1, max_length=128)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class TokenIn(_In):
    """A new admin token: who it is for and its role."""

    name: str = Field(min_length=1, max_length=128)
    role: AdminRole


class TokenOut(_Out):
    """A new admin token; ``token`` is shown this once."""

    id: int
    name: str
    role: AdminRole
    token: str


class EnrollmentTokenIn(_In):
    """A new enrollment token: how many devices, for how long, which tags they get."""

    max_uses: int = Field(default=1, ge=1, le=1_000_000)
    expires_in_seconds: int | None = Field(default=None, ge=1, le=10 * 365 * 86_400)
    tags: Tags = Field(default_factory=dict, max_length=64)


class EnrollmentTokenOut(_Out):
    """A new enrollment token; ``token`` is shown this once."""

    id: int
    token: str
    max_uses: int
    expires_at: datetime | None
    tags: dict[str, str]


class DeviceOut(_Out):
    """A device as the admin API shows it (never its credential)."""

    id: str
    status: str
    public_key: str
    tags: dict[str, str]
    inventory: dict[str, Any]
    installed: list[dict[str, Any]]
    created_at: datetime
    approved_at: datetime | None
    revoked_at: datetime | None
    last_seen_at: datetime | None

    @classmethod
    def of(cls, device: Device) -> Self:
        """Build from a store row."""
        return cls.model_validate(device)


class DeviceTagsIn(_In):
    """The complete new set of a device's admin tags."""

    tags: Tags = Field(max_length=64)


class PreauthorizationIn(_In):
    """An identity to accept before the device first enrolls."""

    device_id: DeviceId
    public_key: Annotated[str, Field(max_length=64), AfterValidator(ed25519_public_key)]
    tags: Tags = Field(default_factory=dict, max_length=64)


class PreauthorizationOut(_Out):
    """A stored pre-authorization."""

    device_id: str
    public_key: str
    tags: dict[str, str]
    created_at: datetime


class PinIn(_In):
    """Pin one device (``device_id``) or every device matching ``selector`` tags to a version."""

    model: ModelName
    version: VersionText
    device_id: DeviceId | None = None
    selector: Tags | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _one_target(self) -> PinIn:
        if (self.device_id is None) == (self.selector is None):
            msg = "give exactly one of device_id and selector"
            raise ValueError(msg)
        return self


class PinOut(_Out):
    """A stored pin."""

    id: int
    model: str
    version: str
    device_id: str | None
    selector: dict[str, str] | None
    created_at: datetime
    created_by: str | None


class BundleOut(_Out):
    """A registered bundle version."""

    model: str
    version: str
    release: int
    parent: str | None
    sha256: str
    size: int
    created: str
    signed_by: list[str]
    uploaded_at: datetime
    uploaded_by: str | None
    yanked_at: datetime | None
    yank_reason: str | None


class BundleDetail(BundleOut):
    """A bundle with its full signed manifest."""

    manifest: dict[str, Any]

    @classmethod
    def of(cls, row: BundleRow) -> Self:
        """Build from a store row, parsing the stored manifest."""
        fields = BundleOut.model_validate(row).model_dump()
        return cls(**fields, manifest=json.loads(row.manifest))


class YankIn(_In):
    """Why a version is withdrawn."""

    reason: str = Field(min_length=1, max_length=1024)


class ModelOut(_Out):
    """A model and a glance at its versions."""

    name: str
    created_at: datetime
    versions: int
    latest_version: str | None
    latest_release: int | None


class LineageEntry(_Out):
    """One version in a lineage, with its provenance."""

    version: str
    release: int
    parent: str | None
    created: str
    yanked: bool
    provenance: dict[str, Any] | None

    @classmethod
    def of(cls, row: BundleRow) -> Self:
        """Build from a store row (provenance from the stored manifest)."""
        evidence = json.loads(row.manifest).get("evidence", {})
        return cls(
            version=row.version,
            release=row.release,
            parent=row.parent,
            created=row.created,
            yanked=row.yanked_at is not None,
            provenance=evidence.get("provenance"),
        )


class LineageOut(_Out):
    """A version, its ancestors through ``parent`` (nearest first) and its children."""

    model: str
    version: str
    ancestors: list[LineageEntry]
    children: list[LineageEntry]


class AliasIn(_In):
    """Where an alias should point."""

    version: VersionText


class AliasOut(_Out):
    """An alias and the version it points at."""

    model: str
    name: str
    version: str
    updated_at: datetime
    updated_by: str | None


class AliasChangeOut(_Out):
    """One move of an alias."""

    model: str
    name: str
    version: str | None
    previous_version: str | None
    changed_at: datetime
    changed_by: str | None


class EventOut(_Out):
    """A device event."""

    id: str
    device_id: str
    kind: str
    model: str | None
    version: str | None
    at: datetime
    reason: str | None
    detail: dict[str, Any]
    received_at: datetime


class DeliveryOut(_Out):
    """How one version reached devices: installs, how many by delta, and the bytes that took (ADR 0010)."""

    version: str
    installs: int
    by_delta: int
    bundle_bytes: int
    downloaded_bytes: int
    saved_bytes: int


class AuditOut(_Out):
    """An audit log entry."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]
