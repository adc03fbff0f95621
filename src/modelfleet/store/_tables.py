"""SQLAlchemy tables of the fleet server (SQLite and PostgreSQL).

Times are stored as timezone-aware UTC (``UTCDateTime``) on both back ends.
Large documents (manifests, inventories, summaries) are JSON; the columns that
queries filter or aggregate on are plain, indexed columns next to them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AdminToken",
    "Alias",
    "AliasChange",
    "AuditEntry",
    "Base",
    "BundleRow",
    "DeltaRow",
    "Device",
    "EnrollmentToken",
    "EventRow",
    "ExperimentRow",
    "ModelRow",
    "Pin",
    "Preauthorization",
    "RolloutDecisionRow",
    "RolloutRow",
    "SummaryRow",
    "UTCDateTime",
]


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every back end (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        """Refuse naive datetimes; store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "store only timezone-aware datetimes"
            raise ValueError(msg)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        """Attach UTC to what SQLite returns naive."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Constraint and index names spelled out, so SQLite and PostgreSQL agree and migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Python None is SQL NULL (not JSON 'null'), so ``IS NULL`` finds it; JSONB on PostgreSQL has equality.
_JSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    """Declarative base with the project's type map and constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        dict[str, Any]: _JSON,
        list[Any]: _JSON,
    }


class AdminToken(Base):
    """A bearer token for the admin API, with one role."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None]


class EnrollmentToken(Base):
    """A shared secret that lets devices enroll without approval, a bounded number of times."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))


class Device(Base):
    """An enrolled (or pending, or revoked) device and what it last reported."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    installed: Mapped[list[Any]] = mapped_column(default=list)
    report_hash: Mapped[str | None] = mapped_column(String(64))
    last_issued_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]


class Preauthorization(Base):
    """An identity an admin accepted before the device first enrolled."""

    __tablename__ = "preauthorizations"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))


class ModelRow(Base):
    """A model name; its versions are bundles."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]


class BundleRow(Base):
    """One immutable uploaded bundle version."""

    __tablename__ = "bundles"
    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_bundles_model_version"),
        UniqueConstraint("model", "release", name="uq_bundles_model_release"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(128))
    release: Mapped[int] = mapped_column(BigInteger)
    parent: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[str] = mapped_column(Text)
    created: Mapped[str] = mapped_column(String(32))
    signed_by: Mapped[list[Any]] = mapped_column(default=list)
    uploaded_at: Mapped[datetime]
    uploaded_by: Mapped[str | None] = mapped_column(String(128))
    yanked_at: Mapped[datetime | None]
    yank_reason: Mapped[str | None] = mapped_column(String(1024))


class Alias(Base):
    """A named pointer (``stable``, ``champion``) to one version of a model."""

    __tablename__ = "aliases"

    model: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(128))


class AliasChange(Base):
    """History of where an alias pointed and when (MLflow users ask for this)."""

    __tablename__ = "alias_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(128))
    previous_version: Mapped[str | None] = mapped_column(String(128))
    changed_at: Mapped[datetime]
    changed_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_alias_changes_model_name", "model", "name", "changed_at"),)


class Pin(Base):
    """An admin's decision: this device, or devices matching these tags, run this version."""

    __tablename__ = "pins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str | None] = mapped_column(String(128), index=True)
    selector: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))


class SummaryRow(Base):
    """One telemetry summary; aggregated columns beside the full document."""

    __tablename__ = "telemetry_summaries"
    __table_args__ = (Index("ix_summaries_model_version_window", "model", "version", "window_start"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    cohort: Mapped[str | None] = mapped_column(String(64))
    window_start: Mapped[datetime]
    window_seconds: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    fallbacks: Mapped[int] = mapped_column(BigInteger)
    timeouts: Mapped[int] = mapped_column(BigInteger)
    n_labelled: Mapped[int] = mapped_column(BigInteger)
    n_correct: Mapped[int] = mapped_column(BigInteger)
    n_scored: Mapped[int] = mapped_column(BigInteger)
    confidence_sum: Mapped[float] = mapped_column(Float)
    confidence_sum_sq: Mapped[float] = mapped_column(Float)
    latency_sum_ms: Mapped[float] = mapped_column(Float)
    body: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]


class EventRow(Base):
    """One device event (install, health, rollback, refusal)."""

    __tablename__ = "events"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)  # ids are unique per device
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(128))
    at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(2048))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[datetime]


class AuditEntry(Base):
    """Who did what, when, to what: append-only and hash-chained, so an edit or a gap shows.

    ``hash`` is sha256 over the previous entry's hash and this entry's canonical
    content; ``prev_hash`` is unique, so two writers cannot both extend the same tail.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    hash: Mapped[str | None] = mapped_column(String(64), unique=True)


class RolloutRow(Base):
    """A staged rollout: its frozen spec and where its lifecycle stands (``modelfleet.rollout``).

    ``revision`` grows with every transition; a decision is applied only to the
    revision it was made on, so two reconcilers (or a restart) never decide twice.
    """

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[str] = mapped_column(String(128))
    baseline_version: Mapped[str | None] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]]
    salt: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
    stage: Mapped[int] = mapped_column(Integer, default=-1)
    resume_state: Mapped[str | None] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime | None]
    stage_started_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    planned_devices: Mapped[int] = mapped_column(Integer, default=0)
    last_evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RolloutDecisionRow(Base):
    """One transition of a rollout, with the numbers behind it; one per (rollout, revision)."""

    __tablename__ = "rollout_decisions"
    __table_args__ = (UniqueConstraint("rollout_id", "revision", name="uq_rollout_decisions_rollout_revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(2048))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ExperimentRow(Base):
    """An experiment between versions of a model: frozen spec, state, the latest analysis."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    salt: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    planned_devices: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(2048))
    winner: Mapped[str | None] = mapped_column(String(128))
    rollout_id: Mapped[str | None] = mapped_column(String(32))
    last_analysis: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DeltaRow(Base):
    """A delta from one bundle to another (by sha256) in one format version: requested, built, or why not.

    shared/DESIGN.md §9; ``format_version`` is the version the encoder was asked for (ADR 0010, addendum).
    """

    __tablename__ = "deltas"

    base_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    target_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    format_version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    target_size: Mapped[int] = mapped_column(BigInteger)
    codec: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(1024))
    build_seconds: Mapped[float | None] = mapped_column(Float)
    requested_at: Mapped[datetime]
    built_at: Mapped[datetime | None]
