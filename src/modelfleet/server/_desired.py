"""THE one answer to "what should this device run": today pins, from issue 5 the rollout engine.

``create_app`` takes any :class:`DesiredStateResolver`; :func:`desired_state` is
the default. It reads with one query (the device's pins, every selector pin,
and the newest release of each model the device reports) and decides in
memory, so a check-in costs two indexed reads: the credential and this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import Connection

from modelfleet.protocol import Artifact, DesiredModel
from modelfleet.store import DeviceRecord, PinCandidate, pin_candidates, resolve_pins

__all__ = ["DesiredStateResolver", "artifact_url", "desired_state"]


class DesiredStateResolver(Protocol):
    """Decides, per model, which version a device should run and how."""

    def __call__(self, connection: Connection, device: DeviceRecord, public_url: str) -> list[DesiredModel]:
        """Return the desired state of ``device``, one entry per model, sorted by model."""
        ...


def artifact_url(public_url: str, sha256: str) -> str:
    """Where a device downloads the bundle with this sha256."""
    return f"{public_url.rstrip('/')}/v1/artifacts/{sha256}"


def desired_state(connection: Connection, device: DeviceRecord, public_url: str) -> list[DesiredModel]:
    """Pins resolved for ``device``: device pin > most specific tag selector > newest release of what it runs."""
    installed = {str(entry.get("model")): entry for entry in device.installed}
    candidates = pin_candidates(connection, device.id, installed)
    return [
        _desired(chosen, installed.get(chosen.model), public_url) for chosen in resolve_pins(candidates, device.tags)
    ]


def _desired(chosen: PinCandidate, installed: Mapping[str, Any] | None, public_url: str) -> DesiredModel:
    running = installed.get("release") if installed is not None else None
    return DesiredModel(
        model=chosen.model,
        version=chosen.version,
        release=chosen.release,
        rollback=isinstance(running, int) and running > chosen.release,
        artifact=Artifact(url=artifact_url(public_url, chosen.sha256), sha256=chosen.sha256, size=chosen.size),
    )
