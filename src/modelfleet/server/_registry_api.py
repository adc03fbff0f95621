"""Admin API of the registry: bundles (upload, list, inspect, yank), models, lineage, aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modelfleet.server._auth import ReleaseManager, Viewer, actor_of
from modelfleet.server._body import json_body, request_body
from modelfleet.server._schemas import (
    MODEL_NAME,
    AliasChangeOut,
    AliasIn,
    AliasOut,
    BundleDetail,
    BundleOut,
    LineageEntry,
    LineageOut,
    ModelOut,
    YankIn,
)
from modelfleet.server._state import State
from modelfleet.server._upload import receive_upload, register_upload
from modelfleet.store import (
    alias_history,
    append_audit,
    bundle_children,
    bundle_lineage,
    find_bundle,
    list_aliases,
    list_bundles,
    list_models,
    set_alias,
    yank_bundle,
)

__all__ = ["BODY_MODELS", "UPLOAD_PATH", "registry_router"]

UPLOAD_PATH = "/v1/admin/bundles"
Model = Annotated[str, Path(pattern=MODEL_NAME)]
Version = Annotated[str, Path(min_length=1, max_length=128)]
AliasName = Annotated[str, Path(pattern=MODEL_NAME)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
YankBody = Annotated[YankIn, Depends(json_body(YankIn))]
AliasBody = Annotated[AliasIn, Depends(json_body(AliasIn))]
BODY_MODELS = (YankIn, AliasIn)

registry_router = APIRouter(prefix="/v1/admin", tags=["registry"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The signed `.mfb` bundle, streamed as the raw body.",
    }
}


@registry_router.post(
    "/bundles",
    response_model=BundleOut,
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    responses={200: {"model": BundleOut, "description": "the same bytes were already registered"}},
)
async def upload_bundle(request: Request, principal: ReleaseManager, state: State) -> JSONResponse:
    """Upload a signed bundle: verified against the trusted keys before anything is stored."""
    path = await receive_upload(request, state.upload_dir, state.config.max_upload_bytes)
    try:
        row, created = await run_in_threadpool(register_upload, state, path, actor_of(principal))
    finally:
        path.unlink(missing_ok=True)
    body = BundleOut.model_validate(row).model_dump(mode="json")
    return JSONResponse(body, status_code=201 if created else 200)


@registry_router.get("/bundles", response_model=list[BundleOut])
def bundles(
    _: Viewer,
    state: State,
    model: Annotated[str | None, Query(pattern=MODEL_NAME)] = None,
    include_yanked: bool = True,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[BundleOut]:
    """List bundles, newest release first within each model."""
    with state.transaction() as session:
        rows = list_bundles(session, model=model, include_yanked=include_yanked, limit=limit, offset=offset)
        return [BundleOut.model_validate(row) for row in rows]


@registry_router.get("/bundles/{model}/{version}", response_model=BundleDetail)
def bundle(model: Model, version: Version, _: Viewer, state: State) -> BundleDetail:
    """Inspect one version, with its full signed manifest."""
    with state.transaction() as session:
        return BundleDetail.of(find_bundle(session, model, version))


@registry_router.post("/bundles/{model}/{version}/yank", response_model=BundleOut, openapi_extra=request_body(YankIn))
def yank(model: Model, version: Version, principal: ReleaseManager, body: YankBody, state: State) -> BundleOut:
    """Withdraw a version: pins and aliases stop resolving to it (idempotent)."""
    now = state.clock.now()
    with state.transaction() as session:
        row = yank_bundle(session, model, version, reason=body.reason, now=now)
        append_audit(
            session,
            at=now,
            actor=actor_of(principal),
            action="bundle.yank",
            target=f"{model}/{version}",
            detail={"reason": body.reason},
        )
        return BundleOut.model_validate(row)


@registry_router.get("/models", response_model=list[ModelOut])
def models(_: Viewer, state: State) -> list[ModelOut]:
    """List models with their version count and newest release."""
    with state.transaction() as session:
        return [ModelOut.model_validate(summary) for summary in list_models(session)]


@registry_router.get("/models/{model}/lineage/{version}", response_model=LineageOut)
def lineage(model: Model, version: Version, _: Viewer, state: State) -> LineageOut:
    """A version's ancestors through ``parent`` (nearest first) and children, each with provenance."""
    with state.transaction() as session:
        chain = bundle_lineage(session, model, version)
        children = bundle_children(session, model, version)
        return LineageOut(
            model=model,
            version=version,
            ancestors=[LineageEntry.of(row) for row in chain[1:]],
            children=[LineageEntry.of(row) for row in children],
        )


@registry_router.put(
    "/models/{model}/aliases/{alias}", response_model=AliasChangeOut, openapi_extra=request_body(AliasIn)
)
def put_alias(
    model: Model, alias: AliasName, principal: ReleaseManager, body: AliasBody, state: State
) -> AliasChangeOut:
    """Point an alias at a version; the move is kept in the alias history."""
    now = state.clock.now()
    with state.transaction() as session:
        change = set_alias(session, model, alias, body.version, now=now, actor=actor_of(principal))
        append_audit(
            session,
            at=now,
            actor=actor_of(principal),
            action="alias.set",
            target=f"{model}@{alias}",
            detail={"version": body.version, "previous": change.previous_version},
        )
        return AliasChangeOut.model_validate(change)


@registry_router.get("/models/{model}/aliases", response_model=list[AliasOut])
def aliases(model: Model, _: Viewer, state: State) -> list[AliasOut]:
    """A model's aliases and where they point."""
    with state.transaction() as session:
        return [AliasOut.model_validate(row) for row in list_aliases(session, model)]


@registry_router.get("/models/{model}/aliases/{alias}/history", response_model=list[AliasChangeOut])
def history(model: Model, alias: AliasName, _: Viewer, state: State) -> list[AliasChangeOut]:
    """Every move of an alias, oldest first."""
    with state.transaction() as session:
        return [AliasChangeOut.model_validate(row) for row in alias_history(session, model, alias)]
