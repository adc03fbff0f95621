"""Enrollment: check the device's proof of key possession and freshness, then let the store decide."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta

from modelfleet.bundle import PublicKey
from modelfleet.errors import AuthenticationError
from modelfleet.protocol import EnrollRequest, enrollment_message
from modelfleet.server._errors import ApiError
from modelfleet.server._state import ServerState
from modelfleet.store import EnrollmentClaim, EnrollmentOutcome, append_audit, enroll_device

__all__ = ["enroll", "verify_fresh", "verify_proof"]


def verify_proof(request: EnrollRequest) -> None:
    """Check that ``proof`` is the enrolling key's signature over the enrollment message.

    Raises:
        AuthenticationError: the proof is malformed or does not verify (``bad_proof``).
    """
    try:
        key = PublicKey(base64.b64decode(request.public_key, validate=True))
        signature = base64.b64decode(request.proof, validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationError("proof must be a base64 Ed25519 signature", code="bad_proof") from None
    if not key.verify(signature, enrollment_message(request)):
        raise AuthenticationError("the proof does not verify with the enrolling public key", code="bad_proof")


def verify_fresh(issued_at: datetime, now: datetime, skew_seconds: int) -> None:
    """Check that ``issued_at`` carries a time zone and lies within the allowed skew of ``now``.

    Raises:
        ApiError: 422 for a naive timestamp.
        AuthenticationError: the timestamp is too far off (``clock_skew``); the ``Date`` header tells the time.
    """
    if issued_at.tzinfo is None:
        raise ApiError(422, "invalid", "issued_at must carry a time zone", field="issued_at")
    if abs(issued_at - now) > timedelta(seconds=skew_seconds):
        msg = f"issued_at {issued_at.isoformat()} is more than {skew_seconds} s from the server's clock"
        raise AuthenticationError(msg, code="clock_skew")


def enroll(state: ServerState, request: EnrollRequest) -> EnrollmentOutcome:
    """Verify an enrollment request and apply it; a new device and every issued credential are audited."""
    now = state.clock.now()
    verify_fresh(request.issued_at, now, state.config.enroll_skew_seconds)
    verify_proof(request)
    claim = EnrollmentClaim(
        device_id=request.device_id,
        public_key=request.public_key,
        issued_at=request.issued_at,
        inventory=request.inventory.model_dump(mode="json"),
        enroll_token=request.enroll_token,
    )
    with state.transaction() as session:
        outcome = enroll_device(session, claim, now)
        if outcome.credential is not None or outcome.first:  # a pending device polling is not news
            append_audit(
                session,
                at=now,
                actor=f"device:{request.device_id}",
                action=f"device.enroll.{outcome.status}",
                target=request.device_id,
                detail={"with_token": request.enroll_token is not None},
            )
    return outcome
