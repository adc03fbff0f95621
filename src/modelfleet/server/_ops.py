"""Operations endpoints: ``/healthz`` for load balancers, ``/metrics`` for Prometheus (no auth, no data)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from modelfleet.server._errors import ErrorBody, error_response
from modelfleet.server._state import ServerState, State

__all__ = ["ops_router"]

ops_router = APIRouter(tags=["operations"])


class Health(BaseModel):
    """The server answers and reaches its database."""

    status: Literal["ok"] = "ok"


def _database_answers(state: ServerState) -> bool:
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


@ops_router.get(
    "/healthz", response_model=Health, responses={503: {"model": ErrorBody, "description": "database unreachable"}}
)
async def healthz(state: State) -> Response:
    """200 when the server can reach its database, else 503."""
    if not await run_in_threadpool(_database_answers, state):
        return error_response(503, "database_unavailable", "the database does not answer")
    return Response(Health().model_dump_json(), media_type="application/json")


@ops_router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: State) -> Response:
    """Prometheus text exposition of this process's metrics."""
    return state.metrics.render()
