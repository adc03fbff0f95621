"""``create_app``: the FastAPI app of one server process, with its lifespan and middleware.

One pure ASGI middleware (``RequestGate``: metrics, bounds, the check-in's
short way in): Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per
request, which goosebit measured at ~22% of its time, and each further layer
costs a frame and a wrapped ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from modelfleet import __version__
from modelfleet.clock import Clock, SystemClock
from modelfleet.rollout import ExperimentWatcher, Reconciler
from modelfleet.server._admin_api import BODY_MODELS as ADMIN_BODIES
from modelfleet.server._admin_api import admin_router
from modelfleet.server._background import run_drift_checks, run_reconciler
from modelfleet.server._body import add_body_schemas
from modelfleet.server._config import ServerConfig
from modelfleet.server._dashboard import install_dashboard
from modelfleet.server._deltas import DeltaOffers, run_delta_builds
from modelfleet.server._desired import DesiredStateResolver, desired_state
from modelfleet.server._device_api import BODY_MODELS as DEVICE_BODIES
from modelfleet.server._device_api import device_router
from modelfleet.server._drift_api import drift_router
from modelfleet.server._errors import install_error_handlers
from modelfleet.server._experiment_api import BODY_MODELS as EXPERIMENT_BODIES
from modelfleet.server._experiment_api import experiment_router
from modelfleet.server._gate import RequestGate
from modelfleet.server._lastseen import LastSeenBuffer, run_flusher
from modelfleet.server._metrics import Metrics
from modelfleet.server._ops import ops_router
from modelfleet.server._registry_api import BODY_MODELS as REGISTRY_BODIES
from modelfleet.server._registry_api import UPLOAD_PATH, registry_router
from modelfleet.server._rollout_api import BODY_MODELS as ROLLOUT_BODIES
from modelfleet.server._rollout_api import rollout_router
from modelfleet.server._rollout_desired import RolloutResolver
from modelfleet.server._state import ServerState
from modelfleet.server._wake import wake_publisher
from modelfleet.store import BlobStore, FilesystemBlobStore, check_schema_current, make_engine, session_factory

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    *,
    clock: Clock | None = None,
    engine: Engine | None = None,
    blob_store: BlobStore | None = None,
    resolver: DesiredStateResolver | None = None,
) -> FastAPI:
    """Build the server app; an engine made here is disposed of when the app shuts down.

    Args:
        config: the server's settings.
        clock: where time comes from (default: the system clock).
        engine: a database engine to use instead of one made from ``config.database_url``.
        blob_store: where bundle bytes live (default: files under ``config.blob_dir``).
        resolver: what answers "what should this device run" (default: pins, :func:`desired_state`).
    """
    trusted = config.trusted()
    database = engine or make_engine(config.database_url)
    state = ServerState(
        config=config,
        engine=database,
        sessions=session_factory(database),
        clock=clock or SystemClock(),
        blobs=blob_store or FilesystemBlobStore(config.blob_dir),
        trusted=trusted,
        metrics=Metrics(),
        last_seen=LastSeenBuffer(),
        resolver=DeltaOffers(
            resolver or RolloutResolver(desired_state, ttl_seconds=config.rollout_cache_seconds), config.deltas
        ),
        upload_dir=config.data_dir / "uploads",
    )
    app = FastAPI(
        title="modelfleet",
        version=__version__,
        summary="Signed model bundles for edge fleets: device and admin API (ADR 0003).",
        lifespan=_lifespan(state, owns_engine=engine is None),
    )
    app.state.server = state
    app.state.reconciler = Reconciler(state.sessions, state.clock)
    app.state.experiments = ExperimentWatcher(state.sessions, state.clock)
    app.state.invalidate_rollouts = getattr(state.resolver, "invalidate", lambda: None)
    app.state.wake = wake_publisher(config.mqtt_url)
    install_error_handlers(app)
    for router in (
        device_router,
        registry_router,
        admin_router,
        rollout_router,
        experiment_router,
        drift_router,
        ops_router,
    ):
        app.include_router(router)
    install_dashboard(app)
    add_body_schemas(app, (*DEVICE_BODIES, *REGISTRY_BODIES, *ADMIN_BODIES, *ROLLOUT_BODIES, *EXPERIMENT_BODIES))
    streamed = {("POST", UPLOAD_PATH): config.max_upload_bytes}
    app.add_middleware(RequestGate, state=state, streamed=streamed)
    return app


def _lifespan(state: ServerState, *, owns_engine: bool) -> Callable[[FastAPI], AbstractAsyncContextManager[Any]]:
    """Refuse a database whose schema is not current; flush last-seen times while serving and once at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(check_schema_current, state.engine)
        flusher = asyncio.create_task(
            run_flusher(state.last_seen, state.engine, state.config.last_seen_flush_seconds, _counted(state))
        )
        looks = asyncio.create_task(
            run_reconciler(
                (app.state.reconciler, app.state.experiments),
                state.config.reconcile_seconds,
                app.state.invalidate_rollouts,
            )
        )
        tasks = [looks, flusher]
        if state.config.drift.enabled:
            tasks.append(asyncio.create_task(run_drift_checks(state.engine, state.clock, state.config.drift)))
        if state.config.deltas.enabled and isinstance(state.resolver, DeltaOffers):
            builds = run_delta_builds(state.resolver, state.engine, state.blobs, state.clock, state.config.deltas)
            tasks.append(asyncio.create_task(builds))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await _final_flush(state)
            app.state.wake.close()
            if owns_engine:
                state.engine.dispose()

    return lifespan


def _counted(state: ServerState) -> Callable[[int], None]:
    def count(written: int) -> None:
        state.metrics.last_seen_flushed.inc(written)

    return count


async def _final_flush(state: ServerState) -> None:
    try:
        _counted(state)(await asyncio.to_thread(state.last_seen.flush, state.engine))
    except Exception:
        log.exception(
            "the last flush of last-seen times failed; %d devices keep older times", state.last_seen.pending()
        )
