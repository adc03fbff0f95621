"""Admin API of experiments: plan, start, list, status (with the analysis now), stop, promote."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict

from modelfleet.rollout import (
    ExperimentSpec,
    current_document,
    experiment_plan,
    promote_experiment,
    start_experiment,
    stop_experiment,
)
from modelfleet.server._auth import Admin, Viewer, actor_of
from modelfleet.server._body import json_body, request_body
from modelfleet.server._state import State
from modelfleet.store import ExperimentRow, find_bundle, find_experiment, list_experiments

__all__ = ["BODY_MODELS", "ExperimentOut", "experiment_router"]

ExperimentId = Annotated[str, Path(pattern=r"^ex-[0-9a-f]{10}$")]
SpecBody = Annotated[ExperimentSpec, Depends(json_body(ExperimentSpec))]
Force = Annotated[bool, Query(description="start even if the plan cannot reach its power")]
BODY_MODELS = (ExperimentSpec,)

experiment_router = APIRouter(prefix="/v1/admin/experiments", tags=["experiments"])


class ExperimentOut(BaseModel):
    """An experiment: spec, state, and its analysis from the telemetry stored so far."""

    model_config = ConfigDict(frozen=True)

    id: str
    model: str
    kind: str
    state: str
    planned_devices: int
    created_at: datetime
    created_by: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    reason: str | None
    winner: str | None
    rollout_id: str | None
    spec: dict[str, Any]
    analysis: dict[str, Any]

    @classmethod
    def of(cls, row: ExperimentRow, analysis: dict[str, Any]) -> ExperimentOut:
        """Build from a row and an analysis."""
        return cls(
            id=row.id, model=row.model, kind=row.kind, state=row.state, planned_devices=row.planned_devices,
            created_at=row.created_at, created_by=row.created_by, started_at=row.started_at,
            stopped_at=row.stopped_at, reason=row.reason, winner=row.winner, rollout_id=row.rollout_id,
            spec=row.spec, analysis=analysis,
        )  # fmt: skip


def _changed(request: Request) -> None:
    invalidate = getattr(request.app.state, "invalidate_rollouts", None)
    if invalidate is not None:
        invalidate()


@experiment_router.post("/plan", openapi_extra=request_body(ExperimentSpec))
def plan(spec: SpecBody, _: Viewer, state: State) -> dict[str, Any]:
    """Devices and duration the experiment needs on the fleet as it is now; nothing is stored."""
    with state.transaction() as session:
        for variant in spec.variants:
            find_bundle(session, spec.model, variant.version)
        planned = experiment_plan(session, spec, state.clock.now())
        return {key: _plain(value) for key, value in dataclasses.asdict(planned).items()}


def _plain(value: object) -> object:
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if isinstance(value, float) and value != value:  # NaN  # noqa: PLR0124
        return None
    return value


@experiment_router.post("", response_model=ExperimentOut, status_code=201, openapi_extra=request_body(ExperimentSpec))
def start(spec: SpecBody, principal: Admin, state: State, request: Request, force: Force = False) -> ExperimentOut:
    """Start an experiment (devices of the target get their variant at their next check-in)."""
    with state.transaction() as session:
        row = start_experiment(session, spec, now=state.clock.now(), actor=actor_of(principal), force=force)
        out = ExperimentOut.of(row, current_document(session, row))
    _changed(request)
    return out


@experiment_router.get("", response_model=list[ExperimentOut])
def experiments(
    _: Viewer,
    state: State,
    model: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ExperimentOut]:
    """Experiments, newest first, with their last stored analysis."""
    with state.transaction() as session:
        return [
            ExperimentOut.of(row, row.last_analysis or {})
            for row in list_experiments(session, model=model, limit=limit)
        ]


@experiment_router.get("/{experiment_id}", response_model=ExperimentOut)
def experiment(experiment_id: ExperimentId, _: Viewer, state: State) -> ExperimentOut:
    """One experiment with its analysis now: per variant devices, lifts, intervals, always-valid p-values."""
    with state.transaction() as session:
        row = find_experiment(session, experiment_id)
        return ExperimentOut.of(row, current_document(session, row))


@experiment_router.post("/{experiment_id}/stop", response_model=ExperimentOut)
def stop(experiment_id: ExperimentId, principal: Admin, state: State, request: Request) -> ExperimentOut:
    """Stop the experiment; its devices go back to what pins and rollouts say."""
    with state.transaction() as session:
        row = stop_experiment(
            session,
            experiment_id,
            now=state.clock.now(),
            actor=actor_of(principal),
            reason=f"stopped by {actor_of(principal)}",
        )
        out = ExperimentOut.of(row, row.last_analysis or {})
    _changed(request)
    return out


@experiment_router.post("/{experiment_id}/promote", response_model=ExperimentOut)
def promote(
    experiment_id: ExperimentId,
    principal: Admin,
    state: State,
    request: Request,
    version: Annotated[
        str | None, Query(max_length=128, description="promote this variant even without a winner")
    ] = None,
) -> ExperimentOut:
    """Ship the winner through a staged rollout built from the spec's ``auto_promote`` section."""
    with state.transaction() as session:
        row = promote_experiment(
            session, experiment_id, now=state.clock.now(), actor=actor_of(principal), version=version
        )
        out = ExperimentOut.of(row, row.last_analysis or {})
    _changed(request)
    return out
