"""Deltas are kept per format version: primary key (base_sha256, target_sha256, format_version).

Devices report the delta formats they read and the server builds a pair in the newest
format both sides know (ADR 0010, addendum), so one pair may be built in several formats.
Rows from before this revision were built with the encoder's default since format 2
existed, so they are kept as format 2 (their generic deltas are written as format 1
whatever was asked; the server tells them apart by ``codec``).

Revision ID: 0006_delta_formats
Revises: 0005_event_keys
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_delta_formats"
down_revision: str | Sequence[str] | None = "0005_event_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Older formats of a pair that also has a newer one: the rows a key without the format cannot hold.
_SUPERSEDED = """
DELETE FROM deltas WHERE format_version < (
    SELECT MAX(newest.format_version) FROM deltas AS newest
    WHERE newest.base_sha256 = deltas.base_sha256 AND newest.target_sha256 = deltas.target_sha256
)
"""


def upgrade() -> None:
    """Add ``format_version`` (existing rows: 2) and key deltas by it."""
    with op.batch_alter_table("deltas") as batch:
        batch.add_column(sa.Column("format_version", sa.Integer(), nullable=False, server_default="2"))
    with op.batch_alter_table("deltas") as batch:
        batch.alter_column("format_version", existing_type=sa.Integer(), server_default=None)
        batch.drop_constraint("pk_deltas", type_="primary")
        batch.create_primary_key("pk_deltas", ["base_sha256", "target_sha256", "format_version"])


def downgrade() -> None:
    """Key deltas by pair again, keeping each pair's newest format (the others are rebuilt on demand)."""
    op.execute(_SUPERSEDED)
    with op.batch_alter_table("deltas") as batch:
        batch.drop_constraint("pk_deltas", type_="primary")
        batch.create_primary_key("pk_deltas", ["base_sha256", "target_sha256"])
        batch.drop_column("format_version")
