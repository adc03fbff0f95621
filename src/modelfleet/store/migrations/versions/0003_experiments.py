"""Experiments between versions of a model.

Revision ID: 0003_experiments
Revises: 0002_rollouts
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_experiments"
down_revision: str | Sequence[str] | None = "0002_rollouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.JSON[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the experiments table."""
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("planned_devices", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("stopped_at", _utc(), nullable=True),
        sa.Column("reason", sa.String(2048), nullable=True),
        sa.Column("winner", sa.String(128), nullable=True),
        sa.Column("rollout_id", sa.String(32), nullable=True),
        sa.Column("last_analysis", _json(), nullable=False),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_experiments_model_models"),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
    )
    op.create_index("ix_experiments_model", "experiments", ["model"])
    op.create_index("ix_experiments_state", "experiments", ["state"])


def downgrade() -> None:
    """Drop the experiments table."""
    op.drop_index("ix_experiments_state", table_name="experiments")
    op.drop_index("ix_experiments_model", table_name="experiments")
    op.drop_table("experiments")
