"""Devices: enrollment, approval, revocation, tags, and what each one last reported.

A device's own key pair identifies it (ADR 0003): the first enrollment binds
the device id to a public key for good, an enrollment token or an admin's
pre-authorization accepts it at once, anything else leaves it pending until an
admin approves. An accepted enrollment issues a fresh bearer credential whose
sha256 is the only thing stored. Check-ins read one row by that hash and write
only when the report changed; ``last_seen_at`` arrives in batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelfleet.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from modelfleet.store._driver import as_json, driver_rows
from modelfleet.store._tables import Device, Preauthorization
from modelfleet.store._tokens import new_secret, redeem_enrollment_token, secret_hash

__all__ = [
    "DeviceRecord",
    "DeviceStatus",
    "EnrollmentClaim",
    "EnrollmentOutcome",
    "approve_device",
    "device_by_credential",
    "enroll_device",
    "find_device",
    "flush_last_seen",
    "list_devices",
    "preauthorize_device",
    "record_report",
    "revoke_device",
    "set_device_tags",
]

DeviceStatus = Literal["pending", "accepted", "revoked"]

_devices = cast("Table", Device.__table__)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """What a device request needs to know about its caller (read on every request)."""

    id: str
    status: str
    tags: Mapping[str, str]
    report_hash: str | None
    installed: Sequence[Mapping[str, Any]] = ()


# JSON read as text on both back ends, so recurring documents are decoded once (``as_json``).
_BY_CREDENTIAL = (
    "SELECT id, status, CAST(tags AS TEXT), report_hash, CAST(installed AS TEXT) FROM devices WHERE credential_hash = ?"
)


def device_by_credential(conn: Connection, credential: str) -> DeviceRecord | None:
    """The device holding ``credential``, by one read of the unique credential-hash index (on the driver)."""
    rows = driver_rows(conn, _BY_CREDENTIAL, (secret_hash(credential),))
    if not rows:
        return None
    device_id, status, tags, report_hash, installed = rows[0]
    return DeviceRecord(device_id, status, as_json(tags) or {}, report_hash, tuple(as_json(installed) or ()))


def record_report(
    conn: Connection, device_id: str, *, inventory: Mapping[str, Any], installed: Sequence[Any], report_hash: str
) -> None:
    """Store a changed check-in report (callers skip this when the hash is unchanged)."""
    conn.execute(
        update(_devices)
        .where(_devices.c.id == device_id)
        .values(inventory=dict(inventory), installed=list(installed), report_hash=report_hash)
    )


def flush_last_seen(conn: Connection, seen: Mapping[str, datetime]) -> int:
    """Write many devices' last-seen times in one executemany; never moves a time backwards."""
    if not seen:
        return 0
    d = _devices
    statement = (
        update(d)
        .where(d.c.id == bindparam("b_id"), d.c.last_seen_at.is_(None) | (d.c.last_seen_at < bindparam("b_seen")))
        .values(last_seen_at=bindparam("b_seen"))
    )
    conn.execute(statement, [{"b_id": device_id, "b_seen": at} for device_id, at in seen.items()])
    return len(seen)


@dataclass(frozen=True, slots=True)
class EnrollmentClaim:
    """An enrollment request whose proof of key possession already checked out."""

    device_id: str
    public_key: str
    issued_at: datetime
    inventory: Mapping[str, Any]
    enroll_token: str | None = None


@dataclass(frozen=True, slots=True)
class EnrollmentOutcome:
    """Accepted (with a new credential, shown once) or pending approval; ``first`` for a new device."""

    status: DeviceStatus
    credential: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    first: bool = False


def enroll_device(session: Session, claim: EnrollmentClaim, now: datetime) -> EnrollmentOutcome:
    """Apply an enrollment: accept, keep pending, rotate the credential, or refuse.

    Raises:
        ConflictError: the device id is bound to another key (``key_mismatch``).
        AuthenticationError: ``issued_at`` is not later than the last accepted one (``replayed``),
            or the enrollment token is unknown.
        PermissionDeniedError: the device is revoked, or the token expired or is used up.
    """
    device = session.get(Device, claim.device_id, with_for_update=True)
    if device is None:
        return _first_enrollment(session, claim, now)
    _check_known(device, claim)
    if device.status == "pending" and claim.enroll_token is not None:
        device.tags = {**device.tags, **redeem_enrollment_token(session, claim.enroll_token, now)}
        device.status = "accepted"
    if device.status == "pending" and _preauthorized(session, claim):
        device.status = "accepted"
    device.last_issued_at = claim.issued_at
    device.inventory = dict(claim.inventory)
    return _outcome(session, device, now)


def _check_known(device: Device, claim: EnrollmentClaim) -> None:
    if device.public_key != claim.public_key:
        msg = f"device {device.id} is bound to the key it first enrolled with; a new key needs a new device id"
        raise ConflictError(msg, code="key_mismatch")
    if device.last_issued_at is not None and claim.issued_at <= device.last_issued_at:
        msg = "issued_at is not later than the last accepted enrollment request; this looks like a replay"
        raise AuthenticationError(msg, code="replayed")
    if device.status == "revoked":
        msg = f"device {device.id} is revoked"
        raise PermissionDeniedError(msg, code="device_revoked")


def _preauthorized(session: Session, claim: EnrollmentClaim) -> Preauthorization | None:
    preauth = session.get(Preauthorization, claim.device_id)
    if preauth is not None and preauth.public_key != claim.public_key:
        msg = f"device {claim.device_id} is pre-authorized with another key"
        raise ConflictError(msg, code="key_mismatch")
    return preauth


def _first_enrollment(session: Session, claim: EnrollmentClaim, now: datetime) -> EnrollmentOutcome:
    preauth = _preauthorized(session, claim)
    tags: dict[str, str] = dict(preauth.tags) if preauth is not None else {}
    if claim.enroll_token is not None:
        tags |= redeem_enrollment_token(session, claim.enroll_token, now)
    accepted = preauth is not None or claim.enroll_token is not None
    device = Device(
        id=claim.device_id,
        public_key=claim.public_key,
        status="accepted" if accepted else "pending",
        tags=tags,
        inventory=dict(claim.inventory),
        installed=[],
        last_issued_at=claim.issued_at,
        created_at=now,
    )
    session.add(device)
    try:
        return replace(_outcome(session, device, now), first=True)
    except IntegrityError:
        msg = f"device {claim.device_id} enrolled concurrently; retry"
        raise ConflictError(msg, code="enroll_race") from None


def _outcome(session: Session, device: Device, now: datetime) -> EnrollmentOutcome:
    """Issue a fresh credential to an accepted device (rotating any old one)."""
    if device.status != "accepted":
        session.flush()
        return EnrollmentOutcome("pending", tags=dict(device.tags))
    credential = new_secret("mfd_")
    device.credential_hash = secret_hash(credential)
    device.approved_at = device.approved_at or now
    session.flush()
    return EnrollmentOutcome("accepted", credential, dict(device.tags))


def find_device(session: Session, device_id: str) -> Device:
    """The device ``device_id``.

    Raises:
        NotFoundError: no such device.
    """
    device = session.get(Device, device_id)
    if device is None:
        msg = f"no device {device_id!r}"
        raise NotFoundError(msg, code="unknown_device")
    return device


def list_devices(
    session: Session,
    *,
    status: DeviceStatus | None = None,
    tags: Mapping[str, str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Device]:
    """Devices by id, optionally only those in one status and holding every given admin tag."""
    statement = select(Device).order_by(Device.id).limit(limit).offset(offset)
    if status is not None:
        statement = statement.where(Device.status == status)
    for key, value in (tags or {}).items():
        statement = statement.where(Device.tags[key].as_string() == value)
    return list(session.scalars(statement))


def approve_device(session: Session, device_id: str, now: datetime) -> Device:
    """Accept a pending (or re-admit a revoked) device; it gets its credential at its next enroll call."""
    device = find_device(session, device_id)
    if device.status != "accepted":
        device.status = "accepted"
        device.approved_at = now
        device.revoked_at = None
        device.credential_hash = None
    return device


def revoke_device(session: Session, device_id: str, now: datetime) -> Device:
    """Revoke a device: its credential stops working with the next request."""
    device = find_device(session, device_id)
    device.status = "revoked"
    device.credential_hash = None
    device.revoked_at = now
    return device


def set_device_tags(session: Session, device_id: str, tags: Mapping[str, str]) -> Device:
    """Replace a device's admin tags (what tag-selector pins and rollouts match)."""
    device = find_device(session, device_id)
    device.tags = dict(tags)
    return device


def preauthorize_device(
    session: Session,
    *,
    device_id: str,
    public_key: str,
    tags: Mapping[str, str],
    now: datetime,
    created_by: str | None = None,
) -> Preauthorization:
    """Accept ``(device_id, public_key)`` before the device enrolls; a pending device with that key is accepted.

    Raises:
        ConflictError: the device already enrolled with another key.
    """
    device = session.get(Device, device_id)
    if device is not None and device.public_key != public_key:
        msg = f"device {device_id} is enrolled with another key"
        raise ConflictError(msg, code="key_mismatch")
    if device is not None and device.status == "pending":
        device.status = "accepted"
        device.approved_at = now
        device.tags = {**device.tags, **tags}
    preauth = session.get(Preauthorization, device_id) or Preauthorization(device_id=device_id)
    preauth.public_key = public_key
    preauth.tags = dict(tags)
    preauth.created_at = now
    preauth.created_by = created_by
    session.add(preauth)
    session.flush()
    return preauth
