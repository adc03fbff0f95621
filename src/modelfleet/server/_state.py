"""What every request handler reaches: config, database, clock, blobs, keys, metrics, resolver."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from modelfleet.bundle import TrustedKeys
from modelfleet.clock import Clock
from modelfleet.server._config import ServerConfig
from modelfleet.server._desired import DesiredStateResolver
from modelfleet.server._lastseen import LastSeenBuffer
from modelfleet.server._metrics import Metrics
from modelfleet.store import BlobStore, write_transaction

__all__ = ["ServerState", "State", "server_state"]


@dataclass(frozen=True, slots=True)
class ServerState:
    """One app's long-lived collaborators, built once by ``create_app``."""

    config: ServerConfig
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock
    blobs: BlobStore
    trusted: TrustedKeys
    metrics: Metrics
    last_seen: LastSeenBuffer
    resolver: DesiredStateResolver
    upload_dir: Path

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits when the block ends without an exception (a write transaction)."""
        with (
            write_transaction(self.engine) as connection,
            self.sessions(bind=connection, join_transaction_mode="rollback_only") as session,
        ):
            yield session
            session.flush()


async def server_state(request: Request) -> ServerState:
    """The state of the app serving ``request`` (async: no thread hop for a dict lookup)."""
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server_state)]
