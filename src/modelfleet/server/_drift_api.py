"""Admin read route of the drift monitor: a version's current scores, shares, retrain decision and parent comparison.

The answer is computed on request from the stored summaries (the same code the
periodic :func:`~modelfleet.server._retrain.check_drift` runs), so it is never
staler than the newest summary; it writes nothing.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict

from modelfleet.rollout import DeviceDrift, FleetDrift
from modelfleet.server._auth import Viewer
from modelfleet.server._retrain import VersionDrift, monitor_version
from modelfleet.server._schemas import MODEL_NAME
from modelfleet.server._state import State

__all__ = ["DriftDeviceOut", "DriftOut", "drift_router"]

drift_router = APIRouter(prefix="/v1/admin", tags=["drift"])

Model = Annotated[str, Path(pattern=MODEL_NAME)]
Version = Annotated[str, Path(min_length=1, max_length=128)]


class DriftDeviceOut(BaseModel):
    """One device's verdict and its latest score per feature (None: not scored)."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    group: str
    evaluated: bool
    drifting: bool
    drifting_features: list[str]
    windows: list[datetime]
    latest: dict[str, float | None]


class DriftOut(BaseModel):
    """The drift monitor's current result for one version."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: str
    parent: str | None
    at: datetime
    since: datetime
    truncated: bool
    policy: dict[str, Any]
    decision: dict[str, Any]
    comparison: dict[str, Any] | None
    features: list[dict[str, Any]]
    devices_shown: int
    devices: list[DriftDeviceOut]


def _latest(result: FleetDrift, index: int) -> dict[str, float | None]:
    row = result.scores[index, -1, :]
    return {name: float(v) if math.isfinite(v) else None for name, v in zip(result.features, row, strict=True)}


def _device(result: FleetDrift, index: int, verdict: DeviceDrift) -> DriftDeviceOut:
    return DriftDeviceOut(
        device_id=verdict.device_id,
        group=verdict.group,
        evaluated=verdict.evaluated,
        drifting=verdict.drifting,
        drifting_features=list(verdict.drifting_features),
        windows=list(verdict.windows),
        latest=_latest(result, index),
    )


def drift_out(drift: VersionDrift, devices: int) -> DriftOut:
    """The answer: drifting devices first (then by id), at most ``devices`` of them."""
    result = drift.result
    order = sorted(enumerate(result.devices), key=lambda item: (not item[1].drifting, item[1].device_id))[:devices]
    return DriftOut(
        model=result.model,
        version=result.version,
        parent=drift.parent,
        at=drift.at,
        since=drift.since,
        truncated=drift.truncated,
        policy={
            "metric": result.policy.metric,
            "threshold": result.policy.limit,
            "windows": result.policy.windows,
            "min_inferences": result.policy.min_inferences,
            "retrain_share": result.policy.retrain_share,
            "group_by": result.policy.group_by,
        },
        decision=result.decision.evidence(),
        comparison=None if drift.comparison is None else drift.comparison.evidence(),
        features=[
            {"feature": f.feature, "drifting_devices": f.drifting_devices, "mean_score": f.mean_score}
            for f in result.feature_drift
        ],
        devices_shown=len(order),
        devices=[_device(result, index, verdict) for index, verdict in order],
    )


@drift_router.get("/models/{name}/versions/{version}/drift", response_model=DriftOut)
def version_drift(
    name: Model,
    version: Version,
    _: Viewer,
    state: State,
    devices: Annotated[int, Query(ge=0, le=1000, description="devices listed, drifting first")] = 100,
) -> DriftOut:
    """The drift monitor's current view of one version: per-device scores, shares per tag, retrain decision."""
    drift = monitor_version(state.engine, state.config.drift, name, version, state.clock.now())
    return drift_out(drift, devices)
