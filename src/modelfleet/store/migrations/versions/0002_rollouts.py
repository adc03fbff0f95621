"""Rollouts and their decisions; the audit log becomes hash-chained.

Revision ID: 0002_rollouts
Revises: 0001_initial
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from modelfleet.store._audit import GENESIS, audit_hash

revision: str = "0002_rollouts"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.JSON[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Chain the existing audit entries, then create the rollout tables."""
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    _chain_existing_entries()
    with op.batch_alter_table("audit_log") as batch:
        batch.create_unique_constraint("uq_audit_log_prev_hash", ["prev_hash"])
        batch.create_unique_constraint("uq_audit_log_hash", ["hash"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("baseline_version", sa.String(128), nullable=True),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("resume_state", sa.String(32), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("stage_started_at", _utc(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("planned_devices", sa.Integer(), nullable=False),
        sa.Column("last_evaluation", _json(), nullable=False),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_rollouts_model_models"),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_model", "rollouts", ["model"])
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=False),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(2048), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], name="fk_rollout_decisions_rollout_id_rollouts"),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_decisions"),
        sa.UniqueConstraint("rollout_id", "revision", name="uq_rollout_decisions_rollout_revision"),
    )
    op.create_index("ix_rollout_decisions_rollout_id", "rollout_decisions", ["rollout_id"])


def _chain_existing_entries() -> None:
    """Give every entry written before the chain existed its place in it, in id order."""
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("at", _utc()),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("target", sa.String()),
        sa.column("detail", _json()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(audit.c.id, audit.c.at, audit.c.actor, audit.c.action, audit.c.target, audit.c.detail).order_by(
            audit.c.id
        )
    ).all()
    prev = GENESIS
    for row in rows:
        at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)  # SQLite gives naive UTC
        digest = audit_hash(prev, at=at, actor=row.actor, action=row.action, target=row.target, detail=row.detail)
        connection.execute(sa.update(audit).where(audit.c.id == row.id).values(prev_hash=prev, hash=digest))
        prev = digest


def downgrade() -> None:
    """Drop the rollout tables and the chain columns."""
    op.drop_index("ix_rollout_decisions_rollout_id", table_name="rollout_decisions")
    op.drop_table("rollout_decisions")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_index("ix_rollouts_model", table_name="rollouts")
    op.drop_table("rollouts")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_log_hash", type_="unique")
        batch.drop_constraint("uq_audit_log_prev_hash", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
