"""The device API (ADR 0003): enroll, check-in, artifacts, telemetry, events.

Every route but enrollment takes the device from its credential; no body field
names a device, and the wire schemas refuse unknown fields, so a forged id in
a body is a 422, never an identity.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modelfleet.protocol import (
    CheckinRequest,
    CheckinResponse,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    IngestResult,
    TelemetryBatch,
)
from modelfleet.server._artifacts import artifact_path, ranged_file
from modelfleet.server._auth import CallingDevice
from modelfleet.server._body import json_body, request_body
from modelfleet.server._checkin import CHECKIN_OPENAPI, handle_checkin
from modelfleet.server._enroll import enroll
from modelfleet.server._errors import ErrorBody
from modelfleet.server._guards import check_events, check_summaries
from modelfleet.server._state import State
from modelfleet.store import insert_events, insert_summaries, write_transaction

__all__ = ["BODY_MODELS", "device_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "no valid device credential"),
        (413, "body too large"),
        (422, "invalid body"),
        (503, "the database is busy or unreachable; retry after Retry-After seconds"),
    )
}
Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The bundle's sha256 (hex).")]
EnrollBody = Annotated[EnrollRequest, Depends(json_body(EnrollRequest))]
TelemetryBody = Annotated[TelemetryBatch, Depends(json_body(TelemetryBatch))]
EventBody = Annotated[EventBatch, Depends(json_body(EventBatch))]
BODY_MODELS = (EnrollRequest, CheckinRequest, TelemetryBatch, EventBatch)

device_router = APIRouter(prefix="/v1", tags=["device"], responses=_ERRORS)


@device_router.post(
    "/devices/enroll",
    response_model=EnrollResponse,
    openapi_extra=request_body(EnrollRequest),
    responses={
        202: {"model": EnrollResponse, "description": "pending an admin's approval; enroll again later"},
        403: {"model": ErrorBody, "description": "device revoked, or enrollment token expired or used up"},
        409: {"model": ErrorBody, "description": "the device id is bound to another key"},
    },
)
def enroll_device(body: EnrollBody, state: State) -> JSONResponse:
    """Join the fleet with a device-generated key pair; accepted answers carry the credential once."""
    outcome = enroll(state, body)
    answer_body = EnrollResponse(
        status=outcome.status,
        device_id=body.device_id,
        credential=outcome.credential,
        poll_seconds=state.config.poll_seconds,
    )
    return JSONResponse(answer_body.model_dump(mode="json"), status_code=200 if outcome.credential else 202)


@device_router.post(
    "/devices/checkin",
    response_model=CheckinResponse,
    openapi_extra=CHECKIN_OPENAPI,
    responses={304: {"description": "the desired state is the one named in If-None-Match"}},
)
async def checkin(request: Request) -> Response:
    """Report inventory and installed versions; get the desired state per model (ETag, 304 when unchanged)."""
    return await handle_checkin(request.app.state.server, request)


@device_router.get(
    "/artifacts/{sha256}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the whole bundle"},
        206: {"content": {"application/octet-stream": {}}, "description": "the requested byte range"},
        404: {"model": ErrorBody, "description": "no such artifact for this device"},
        416: {"model": ErrorBody, "description": "malformed or unsatisfiable range"},
    },
)
async def artifact(
    sha256: Sha256,
    device: CallingDevice,
    state: State,
    range_header: Annotated[str | None, Header(alias="Range", max_length=256)] = None,
) -> Response:
    """Download a bundle assigned to or installed on the caller, whole or by one byte range."""
    path = await run_in_threadpool(artifact_path, state, device, sha256)
    return ranged_file(path, sha256, range_header)


@device_router.post("/telemetry", response_model=IngestResult, openapi_extra=request_body(TelemetryBatch))
def telemetry(device: CallingDevice, body: TelemetryBody, state: State) -> IngestResult:
    """Store a batch of window summaries; each summary id is stored once, resending is safe."""
    check_summaries(body)
    with write_transaction(state.engine) as connection:
        accepted = insert_summaries(
            connection, device.id, body.summaries, cohort=device.tags.get("cohort"), now=state.clock.now()
        )
    result = IngestResult(accepted=accepted, duplicates=len(body.summaries) - accepted)
    state.metrics.summaries.labels("accepted").inc(result.accepted)
    state.metrics.summaries.labels("duplicate").inc(result.duplicates)
    return result


@device_router.post("/events", response_model=IngestResult, openapi_extra=request_body(EventBatch))
def events(device: CallingDevice, body: EventBody, state: State) -> IngestResult:
    """Store a batch of device events; each event id is stored once, resending is safe."""
    check_events(body)
    with write_transaction(state.engine) as connection:
        accepted = insert_events(connection, device.id, body.events, now=state.clock.now())
    result = IngestResult(accepted=accepted, duplicates=len(body.events) - accepted)
    state.metrics.events.labels("accepted").inc(result.accepted)
    state.metrics.events.labels("duplicate").inc(result.duplicates)
    return result
