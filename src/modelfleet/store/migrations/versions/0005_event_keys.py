"""Events are unique per device: primary key (device_id, id) instead of id.

Event ids are derived on the device from its install journal, so two devices that
go through the same install under the same assignment derive the same ids; with a
key on ``id`` alone the second device's events were dropped as duplicates (and a
device could pre-empt another's). Existing rows keep their ids.

Revision ID: 0005_event_keys
Revises: 0004_deltas
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_event_keys"
down_revision: str | Sequence[str] | None = "0004_deltas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Key events by (device_id, id)."""
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("pk_events", type_="primary")
        batch.create_primary_key("pk_events", ["device_id", "id"])


def downgrade() -> None:
    """Key events by id again (fails if two devices stored the same id)."""
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("pk_events", type_="primary")
        batch.create_primary_key("pk_events", ["id"])
