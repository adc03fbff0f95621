"""Admin API of the fleet: devices, pins, tokens, and the read-only records (events, audit, telemetry)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime

from modelfleet.errors import BadDataError
from modelfleet.protocol import DEVICE_ID_PATTERN
from modelfleet.server._auth import Admin, Viewer, actor_of
from modelfleet.server._body import json_body, request_body
from modelfleet.server._guards import storable_time
from modelfleet.server._schemas import (
    MODEL_NAME,
    AuditOut,
    DeliveryOut,
    DeviceOut,
    DeviceTagsIn,
    EnrollmentTokenIn,
    EnrollmentTokenOut,
    EventOut,
    PinIn,
    PinOut,
    PreauthorizationIn,
    PreauthorizationOut,
    TokenIn,
    TokenOut,
)
from modelfleet.server._state import State
from modelfleet.server._wake import WakeOut, WakePublisher
from modelfleet.store import (
    DeviceStatus,
    WindowAggregate,
    aggregate_windows,
    append_audit,
    approve_device,
    create_admin_token,
    create_enrollment_token,
    create_pin,
    delete_pin,
    delivery_totals,
    find_device,
    list_audit,
    list_devices,
    list_events,
    list_pins,
    preauthorize_device,
    revoke_device,
    set_device_tags,
)

__all__ = ["BODY_MODELS", "admin_router"]

DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
ModelQuery = Annotated[str | None, Query(pattern=MODEL_NAME)]
TagsBody = Annotated[DeviceTagsIn, Depends(json_body(DeviceTagsIn))]
PreauthorizationBody = Annotated[PreauthorizationIn, Depends(json_body(PreauthorizationIn))]
PinBody = Annotated[PinIn, Depends(json_body(PinIn))]
TokenBody = Annotated[TokenIn, Depends(json_body(TokenIn))]
EnrollmentTokenBody = Annotated[EnrollmentTokenIn, Depends(json_body(EnrollmentTokenIn))]
BODY_MODELS = (DeviceTagsIn, PreauthorizationIn, PinIn, TokenIn, EnrollmentTokenIn)

admin_router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _tag_filter(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"tag filter {pair!r} must look like key=value"
            raise BadDataError(msg, code="bad_tag_filter")
        tags[key] = value
    return tags


@admin_router.get("/devices", response_model=list[DeviceOut])
def devices(
    _: Viewer,
    state: State,
    status: DeviceStatus | None = None,
    tag: Annotated[list[str] | None, Query(max_length=16, description="key=value; repeat to AND")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[DeviceOut]:
    """List devices by id, optionally by status and admin tags."""
    with state.transaction() as session:
        rows = list_devices(session, status=status, tags=_tag_filter(tag or []), limit=limit, offset=offset)
        return [DeviceOut.of(row) for row in rows]


@admin_router.get("/devices/{device_id}", response_model=DeviceOut)
def device(device_id: DeviceId, _: Viewer, state: State) -> DeviceOut:
    """One device: status, tags, inventory, installed versions, last seen."""
    with state.transaction() as session:
        return DeviceOut.of(find_device(session, device_id))


@admin_router.post("/devices/{device_id}/approve", response_model=DeviceOut)
def approve(device_id: DeviceId, principal: Admin, state: State) -> DeviceOut:
    """Accept a pending (or re-admit a revoked) device; its next enroll call gets a credential."""
    now = state.clock.now()
    with state.transaction() as session:
        row = approve_device(session, device_id, now)
        append_audit(session, at=now, actor=actor_of(principal), action="device.approve", target=device_id)
        return DeviceOut.of(row)


@admin_router.post("/devices/{device_id}/revoke", response_model=DeviceOut)
def revoke(device_id: DeviceId, principal: Admin, state: State) -> DeviceOut:
    """Revoke a device: its credential fails from the next request on."""
    now = state.clock.now()
    with state.transaction() as session:
        row = revoke_device(session, device_id, now)
        append_audit(session, at=now, actor=actor_of(principal), action="device.revoke", target=device_id)
        return DeviceOut.of(row)


@admin_router.post("/devices/{device_id}/wake", response_model=WakeOut)
def wake(device_id: DeviceId, principal: Admin, state: State, request: Request) -> WakeOut:
    """Ask a device to check in now over MQTT (``sent`` is false without a reachable broker: it polls)."""
    now = state.clock.now()
    with state.transaction() as session:
        find_device(session, device_id)
        append_audit(session, at=now, actor=actor_of(principal), action="device.wake", target=device_id)
    publisher: WakePublisher = request.app.state.wake
    return publisher.wake(device_id)


@admin_router.put("/devices/{device_id}/tags", response_model=DeviceOut, openapi_extra=request_body(DeviceTagsIn))
def put_tags(device_id: DeviceId, principal: Admin, body: TagsBody, state: State) -> DeviceOut:
    """Replace a device's admin tags (what selectors match)."""
    now = state.clock.now()
    with state.transaction() as session:
        row = set_device_tags(session, device_id, body.tags)
        append_audit(
            session, at=now, actor=actor_of(principal), action="device.tags", target=device_id, detail=body.tags
        )
        return DeviceOut.of(row)


@admin_router.post(
    "/devices/preauthorize",
    response_model=PreauthorizationOut,
    status_code=201,
    openapi_extra=request_body(PreauthorizationIn),
)
def preauthorize(principal: Admin, body: PreauthorizationBody, state: State) -> PreauthorizationOut:
    """Accept a device identity (id + public key) before it first enrolls."""
    now = state.clock.now()
    with state.transaction() as session:
        row = preauthorize_device(
            session,
            device_id=body.device_id,
            public_key=body.public_key,
            tags=body.tags,
            now=now,
            created_by=actor_of(principal),
        )
        append_audit(session, at=now, actor=actor_of(principal), action="device.preauthorize", target=body.device_id)
        return PreauthorizationOut.model_validate(row)


@admin_router.post("/pins", response_model=PinOut, status_code=201, openapi_extra=request_body(PinIn))
def pin(principal: Admin, body: PinBody, state: State) -> PinOut:
    """Pin a device or a tag selector to a version (replaces the pin with the same target)."""
    now = state.clock.now()
    with state.transaction() as session:
        row = create_pin(
            session,
            model=body.model,
            version=body.version,
            device_id=body.device_id,
            selector=body.selector,
            now=now,
            created_by=actor_of(principal),
        )
        append_audit(
            session,
            at=now,
            actor=actor_of(principal),
            action="pin.create",
            target=f"{body.model}/{body.version}",
            detail={"pin": row.id, "device_id": body.device_id, "selector": body.selector},
        )
        return PinOut.model_validate(row)


@admin_router.get("/pins", response_model=list[PinOut])
def pins(
    _: Viewer,
    state: State,
    model: ModelQuery = None,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
) -> list[PinOut]:
    """List pins, oldest first."""
    with state.transaction() as session:
        return [PinOut.model_validate(row) for row in list_pins(session, model=model, device_id=device_id)]


@admin_router.delete("/pins/{pin_id}", status_code=204, response_class=Response)
def unpin(pin_id: Annotated[int, Path(ge=1, le=2**31 - 1)], principal: Admin, state: State) -> Response:
    """Remove a pin; devices fall back to the next candidate."""
    now = state.clock.now()
    with state.transaction() as session:
        old = delete_pin(session, pin_id)
        append_audit(
            session,
            at=now,
            actor=actor_of(principal),
            action="pin.delete",
            target=f"{old.model}/{old.version}",
            detail={"pin": pin_id},
        )
    return Response(status_code=204)


@admin_router.post("/tokens", response_model=TokenOut, status_code=201, openapi_extra=request_body(TokenIn))
def token(principal: Admin, body: TokenBody, state: State) -> TokenOut:
    """Create an admin token; the secret is in this answer only."""
    now = state.clock.now()
    with state.transaction() as session:
        issued = create_admin_token(session, name=body.name, role=body.role, now=now, created_by=actor_of(principal))
        append_audit(
            session,
            at=now,
            actor=actor_of(principal),
            action="token.create",
            target=f"token:{issued.id}",
            detail={"name": body.name, "role": body.role},
        )
    return TokenOut(id=issued.id, name=issued.name, role=issued.role, token=issued.secret)


@admin_router.post(
    "/enrollment-tokens",
    response_model=EnrollmentTokenOut,
    status_code=201,
    openapi_extra=request_body(EnrollmentTokenIn),
)
def enrollment_token(principal: Admin, body: EnrollmentTokenBody, state: State) -> EnrollmentTokenOut:
    """Create an enrollment token; the secret is in this answer only."""
    now = state.clock.now()
    expires_at = now + timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    with state.transaction() as session:
        issued = create_enrollment_token(
            session,
            max_uses=body.max_uses,
            expires_at=expires_at,
            tags=body.tags,
            now=now,
            created_by=actor_of(principal),
        )
        append_audit(
            session,
            at=now,
            actor=actor_of(principal),
            action="enrollment_token.create",
            target=f"enrollment-token:{issued.id}",
            detail={"max_uses": body.max_uses, "tags": body.tags},
        )
    return EnrollmentTokenOut(
        id=issued.id, token=issued.secret, max_uses=issued.max_uses, expires_at=expires_at, tags=dict(issued.tags)
    )


@admin_router.get("/events", response_model=list[EventOut])
def events(
    _: Viewer,
    state: State,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    limit: Limit = 100,
) -> list[EventOut]:
    """The newest device events, optionally of one device or kind."""
    with state.transaction() as session:
        return [
            EventOut.model_validate(row) for row in list_events(session, device_id=device_id, kind=kind, limit=limit)
        ]


@admin_router.get("/deliveries", response_model=list[DeliveryOut])
def deliveries(_: Viewer, state: State, model: Annotated[str, Query(pattern=MODEL_NAME)]) -> list[DeliveryOut]:
    """Per version of ``model``: installs, how many arrived by delta, and the bytes that took (ADR 0010)."""
    with state.engine.connect() as connection:
        totals = delivery_totals(connection, model)
    return [
        DeliveryOut(
            version=t.version, installs=t.installs, by_delta=t.by_delta, bundle_bytes=t.bundle_bytes,
            downloaded_bytes=t.downloaded_bytes, saved_bytes=t.saved_bytes,
        )
        for t in totals
    ]  # fmt: skip


@admin_router.get("/audit", response_model=list[AuditOut])
def audit(
    _: Viewer, state: State, action: Annotated[str | None, Query(max_length=64)] = None, limit: Limit = 100
) -> list[AuditOut]:
    """The newest audit entries, optionally of one action."""
    with state.transaction() as session:
        return [AuditOut.model_validate(row) for row in list_audit(session, action=action, limit=limit)]


@admin_router.get("/telemetry/windows", response_model=list[WindowAggregate])
def telemetry_windows(
    *,
    _: Viewer,
    state: State,
    model: Annotated[str, Query(pattern=MODEL_NAME)],
    version: Annotated[str | None, Query(max_length=128)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Limit = 1000,
) -> list[WindowAggregate]:
    """Telemetry sums per (model, version, cohort, window)."""
    storable_time(since, "query.since")
    storable_time(until, "query.until")
    with state.engine.connect() as connection:
        return aggregate_windows(connection, model=model, version=version, since=since, until=until, limit=limit)
