"""Pins: an admin's decision that one device, or every device matching tags, runs a version.

Resolution per model: a pin for the device itself beats any tag selector; among
selectors that match (every selector tag equals the device's admin tag), the one
naming the most tags wins, and among equally specific ones the newest. A model
the device reports installed but no pin covers resolves to its newest release.
Yanked versions are never candidates, so a yank falls back to the next in line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Connection, delete, select
from sqlalchemy.orm import Session

from modelfleet.errors import ConflictError, NotFoundError
from modelfleet.store._driver import as_json, as_utc, driver_rows
from modelfleet.store._registry import find_bundle
from modelfleet.store._tables import Device, Pin

__all__ = [
    "CandidateKind",
    "PinCandidate",
    "create_pin",
    "delete_pin",
    "list_pins",
    "pin_candidates",
    "resolve_pins",
    "selector_matches",
]


CandidateKind = Literal["device", "selector", "newest"]
_KIND_RANK: dict[CandidateKind, int] = {"newest": 0, "selector": 1, "device": 2}


@dataclass(frozen=True, slots=True)
class PinCandidate:
    """A version that may apply to a device: a pin joined with its bundle, or a model's newest release."""

    pin_id: int | None
    model: str
    version: str
    release: int
    sha256: str
    size: int
    device_id: str | None
    selector: Mapping[str, str] | None
    created_at: datetime | None

    @property
    def kind(self) -> CandidateKind:
        """Where the candidate comes from."""
        if self.pin_id is None:
            return "newest"
        return "device" if self.device_id is not None else "selector"


def create_pin(
    session: Session,
    *,
    model: str,
    version: str,
    device_id: str | None = None,
    selector: Mapping[str, str] | None = None,
    now: datetime,
    created_by: str | None = None,
) -> Pin:
    """Pin a device or a tag selector to a version, replacing the pin with the same target.

    Raises:
        ValueError: neither or both of ``device_id`` and ``selector`` given.
        NotFoundError: unknown version or device.
        ConflictError: the version is yanked.
    """
    if (device_id is None) == (selector is None):
        msg = "a pin names exactly one of device_id and selector"
        raise ValueError(msg)
    bundle = find_bundle(session, model, version)
    if bundle.yanked_at is not None:
        msg = f"{model} {version} is yanked and cannot be pinned"
        raise ConflictError(msg, code="yanked")
    if device_id is not None and session.get(Device, device_id) is None:
        msg = f"no device {device_id!r}"
        raise NotFoundError(msg, code="unknown_device")
    for old in _same_target(session, model, device_id, selector):
        session.delete(old)
    pin = Pin(
        model=model,
        version=version,
        device_id=device_id,
        selector=dict(selector) if selector is not None else None,
        created_at=now,
        created_by=created_by,
    )
    session.add(pin)
    session.flush()
    return pin


def _same_target(session: Session, model: str, device_id: str | None, selector: Mapping[str, str] | None) -> list[Pin]:
    if device_id is not None:
        return list(session.scalars(select(Pin).where(Pin.model == model, Pin.device_id == device_id)))
    selector_pins = session.scalars(select(Pin).where(Pin.model == model, Pin.device_id.is_(None)))
    return [pin for pin in selector_pins if pin.selector == dict(selector or {})]


def list_pins(session: Session, *, model: str | None = None, device_id: str | None = None) -> list[Pin]:
    """Pins, oldest first, optionally for one model or one device."""
    statement = select(Pin).order_by(Pin.id)
    if model is not None:
        statement = statement.where(Pin.model == model)
    if device_id is not None:
        statement = statement.where(Pin.device_id == device_id)
    return list(session.scalars(statement))


def delete_pin(session: Session, pin_id: int) -> Pin:
    """Remove a pin and return what it was.

    Raises:
        NotFoundError: no such pin.
    """
    pin = session.get(Pin, pin_id)
    if pin is None:
        msg = f"no pin {pin_id}"
        raise NotFoundError(msg, code="unknown_pin")
    session.execute(delete(Pin).where(Pin.id == pin_id))
    return pin


# The device's own pins and every selector pin (both by the device_id index), with their unyanked bundles.
_PINS = (
    "SELECT p.id, b.model, b.version, b.release, b.sha256, b.size, p.device_id, CAST(p.selector AS TEXT), p.created_at"
    " FROM pins p JOIN bundles b ON b.model = p.model AND b.version = p.version"
    " WHERE (p.device_id = ? OR p.device_id IS NULL) AND b.yanked_at IS NULL"
)
# The newest unyanked release of each named model (by the (model, release) unique index).
_NEWEST = (
    " UNION ALL SELECT NULL, b.model, b.version, b.release, b.sha256, b.size, NULL, NULL, NULL FROM bundles b"
    " WHERE b.model IN ({models}) AND b.yanked_at IS NULL"
    " AND b.release = (SELECT max(l.release) FROM bundles l WHERE l.model = b.model AND l.yanked_at IS NULL)"
)


def pin_candidates(conn: Connection, device_id: str, installed: Iterable[str] = ()) -> list[PinCandidate]:
    """Every candidate for one device in one query (run on the driver: see ``_driver``).

    The device's own pins and every selector pin with their unyanked bundles,
    plus the newest unyanked release of each model in ``installed``.
    """
    models = sorted(set(installed))
    sql = _PINS + _NEWEST.format(models=", ".join("?" * len(models))) if models else _PINS
    return [
        PinCandidate(pin_id, model, version, release, sha256, size, pinned, as_json(selector), as_utc(created))
        for pin_id, model, version, release, sha256, size, pinned, selector, created in driver_rows(
            conn, sql, (device_id, *models)
        )
    ]


def selector_matches(selector: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    """Whether every tag the selector names has that value on the device."""
    return all(tags.get(key) == value for key, value in selector.items())


def _rank(candidate: PinCandidate) -> tuple[int, int, datetime, int]:
    specificity = len(candidate.selector) if candidate.selector is not None else 0
    created = candidate.created_at or datetime.min.replace(tzinfo=UTC)
    return _KIND_RANK[candidate.kind], specificity, created, candidate.pin_id or 0


def resolve_pins(candidates: Iterable[PinCandidate], tags: Mapping[str, str]) -> list[PinCandidate]:
    """The winning candidate per model for a device with ``tags``, sorted by model (pure)."""
    best: dict[str, PinCandidate] = {}
    for candidate in candidates:
        if candidate.selector is not None and not selector_matches(candidate.selector, tags):
            continue
        current = best.get(candidate.model)
        if current is None or _rank(candidate) > _rank(current):
            best[candidate.model] = candidate
    return [best[model] for model in sorted(best)]
