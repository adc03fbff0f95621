"""Alembic environment: runs the revisions on the connection that modelfleet.store hands over."""

from __future__ import annotations

from typing import Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import JSON, Connection

from modelfleet.store._tables import Base, UTCDateTime


def render_type(type_: str, obj: object, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render the project's column types as plain SQLAlchemy types, so revisions never import app code."""
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, JSON):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def run_migrations() -> None:
    """Run the requested revisions inside the caller's transaction (batch mode on SQLite)."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        msg = "run migrations through modelfleet.store.upgrade()/downgrade(); there is no offline mode"
        raise TypeError(msg)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_type,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
