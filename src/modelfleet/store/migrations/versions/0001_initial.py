"""Initial schema: devices, credentials, the bundle registry, pins, telemetry, events, audit log.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.JSON[Any]:
    """JSON documents: JSONB on PostgreSQL, JSON text elsewhere."""
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _utc() -> sa.DateTime:
    """Timezone-aware timestamps (``UTCDateTime`` in the tables)."""
    return sa.DateTime(timezone=True)


def _string(length: int = 128) -> sa.String:
    """A bounded string column type."""
    return sa.String(length=length)


def upgrade() -> None:
    """Create every table of the first server release."""
    _create_identity_tables()
    _create_registry_tables()
    _create_record_tables()


def downgrade() -> None:
    """Drop every table, children before parents."""
    for table in (
        "pins",
        "bundles",
        "aliases",
        "telemetry_summaries",
        "preauthorizations",
        "models",
        "events",
        "enrollment_tokens",
        "devices",
        "audit_log",
        "alias_changes",
        "admin_tokens",
    ):
        op.drop_table(table)


def _create_identity_tables() -> None:
    """Admin tokens, enrollment tokens, devices and pre-authorizations."""
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _string(), nullable=False),
        sa.Column("role", _string(32), nullable=False),
        sa.Column("token_hash", _string(64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", _string(), nullable=True),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_admin_tokens_token_hash"),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", _string(64), nullable=False),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", _string(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_enrollment_tokens_token_hash"),
    )
    op.create_table(
        "devices",
        sa.Column("id", _string(), nullable=False),
        sa.Column("public_key", _string(64), nullable=False),
        sa.Column("status", _string(16), nullable=False),
        sa.Column("credential_hash", _string(64), nullable=True),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("inventory", _json(), nullable=False),
        sa.Column("installed", _json(), nullable=False),
        sa.Column("report_hash", _string(64), nullable=True),
        sa.Column("last_issued_at", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("approved_at", _utc(), nullable=True),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.Column("last_seen_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("credential_hash", name="uq_devices_credential_hash"),
    )
    op.create_index("ix_devices_status", "devices", ["status"])
    op.create_table(
        "preauthorizations",
        sa.Column("device_id", _string(), nullable=False),
        sa.Column("public_key", _string(64), nullable=False),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", _string(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_preauthorizations"),
    )


def _create_registry_tables() -> None:
    """Models, bundles, aliases and their history, pins."""
    op.create_table(
        "models",
        sa.Column("name", _string(64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_models"),
    )
    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _string(64), nullable=False),
        sa.Column("version", _string(), nullable=False),
        sa.Column("release", sa.BigInteger(), nullable=False),
        sa.Column("parent", _string(), nullable=True),
        sa.Column("sha256", _string(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("created", _string(32), nullable=False),
        sa.Column("signed_by", _json(), nullable=False),
        sa.Column("uploaded_at", _utc(), nullable=False),
        sa.Column("uploaded_by", _string(), nullable=True),
        sa.Column("yanked_at", _utc(), nullable=True),
        sa.Column("yank_reason", _string(1024), nullable=True),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_bundles_model_models"),
        sa.PrimaryKeyConstraint("id", name="pk_bundles"),
        sa.UniqueConstraint("model", "release", name="uq_bundles_model_release"),
        sa.UniqueConstraint("model", "version", name="uq_bundles_model_version"),
    )
    op.create_index("ix_bundles_sha256", "bundles", ["sha256"])
    op.create_table(
        "aliases",
        sa.Column("model", _string(64), nullable=False),
        sa.Column("name", _string(64), nullable=False),
        sa.Column("version", _string(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("updated_by", _string(), nullable=True),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_aliases_model_models"),
        sa.PrimaryKeyConstraint("model", "name", name="pk_aliases"),
    )
    op.create_table(
        "alias_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _string(64), nullable=False),
        sa.Column("name", _string(64), nullable=False),
        sa.Column("version", _string(), nullable=True),
        sa.Column("previous_version", _string(), nullable=True),
        sa.Column("changed_at", _utc(), nullable=False),
        sa.Column("changed_by", _string(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alias_changes"),
    )
    op.create_index("ix_alias_changes_model_name", "alias_changes", ["model", "name", "changed_at"])
    op.create_table(
        "pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", _string(64), nullable=False),
        sa.Column("version", _string(), nullable=False),
        sa.Column("device_id", _string(), nullable=True),
        sa.Column("selector", _json(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", _string(), nullable=True),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_pins_model_models"),
        sa.PrimaryKeyConstraint("id", name="pk_pins"),
    )
    op.create_index("ix_pins_device_id", "pins", ["device_id"])
    op.create_index("ix_pins_model", "pins", ["model"])


def _create_record_tables() -> None:
    """Telemetry summaries, device events and the audit log."""
    op.create_table(
        "telemetry_summaries",
        sa.Column("id", _string(64), nullable=False),
        sa.Column("device_id", _string(), nullable=False),
        sa.Column("model", _string(64), nullable=False),
        sa.Column("version", _string(), nullable=False),
        sa.Column("role", _string(16), nullable=False),
        sa.Column("cohort", _string(64), nullable=True),
        sa.Column("window_start", _utc(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("fallbacks", sa.BigInteger(), nullable=False),
        sa.Column("timeouts", sa.BigInteger(), nullable=False),
        sa.Column("n_labelled", sa.BigInteger(), nullable=False),
        sa.Column("n_correct", sa.BigInteger(), nullable=False),
        sa.Column("n_scored", sa.BigInteger(), nullable=False),
        sa.Column("confidence_sum", sa.Float(), nullable=False),
        sa.Column("confidence_sum_sq", sa.Float(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_summaries"),
    )
    op.create_index("ix_summaries_model_version_window", "telemetry_summaries", ["model", "version", "window_start"])
    op.create_index("ix_telemetry_summaries_device_id", "telemetry_summaries", ["device_id"])
    op.create_table(
        "events",
        sa.Column("id", _string(64), nullable=False),
        sa.Column("device_id", _string(), nullable=False),
        sa.Column("kind", _string(32), nullable=False),
        sa.Column("model", _string(64), nullable=True),
        sa.Column("version", _string(), nullable=True),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("reason", _string(2048), nullable=True),
        sa.Column("detail", _json(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_device_id", "events", ["device_id"])
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("actor", _string(), nullable=False),
        sa.Column("action", _string(64), nullable=False),
        sa.Column("target", _string(256), nullable=True),
        sa.Column("detail", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
