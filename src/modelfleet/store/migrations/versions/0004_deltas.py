"""Deltas between bundles, built lazily for the versions devices run.

Revision ID: 0004_deltas
Revises: 0003_experiments
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_deltas"
down_revision: str | Sequence[str] | None = "0003_experiments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the deltas table."""
    op.create_table(
        "deltas",
        sa.Column("base_sha256", sa.String(64), nullable=False),
        sa.Column("target_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("target_size", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(1024), nullable=True),
        sa.Column("build_seconds", sa.Float(), nullable=True),
        sa.Column("requested_at", _utc(), nullable=False),
        sa.Column("built_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("base_sha256", "target_sha256", name="pk_deltas"),
    )
    op.create_index("ix_deltas_status", "deltas", ["status"])
    op.create_index("ix_deltas_sha256", "deltas", ["sha256"])


def downgrade() -> None:
    """Drop the deltas table."""
    op.drop_index("ix_deltas_sha256", table_name="deltas")
    op.drop_index("ix_deltas_status", table_name="deltas")
    op.drop_table("deltas")
