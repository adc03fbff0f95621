"""Tokens: only hashes are stored, and an enrollment token's last use goes to exactly one device."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from modelfleet.errors import AuthenticationError, PermissionDeniedError
from modelfleet.store import (
    AdminToken,
    admin_by_secret,
    create_admin_token,
    create_enrollment_token,
    redeem_enrollment_token,
    secret_hash,
    session_factory,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_an_admin_token_is_stored_as_its_hash_and_found_by_its_secret(session, engine):
    issued = create_admin_token(session, name="ci", role="release-manager", now=NOW)
    session.commit()
    stored = session.scalars(select(AdminToken.token_hash)).all()
    assert stored == [secret_hash(issued.secret)]
    assert issued.secret not in stored
    with engine.connect() as connection:
        principal = admin_by_secret(connection, issued.secret)
        assert (principal.name, principal.role) == ("ci", "release-manager")
        assert admin_by_secret(connection, issued.secret + "x") is None


def test_an_unknown_role_is_a_caller_error(session):
    with pytest.raises(ValueError, match="unknown role"):
        create_admin_token(session, name="x", role="root", now=NOW)


def test_redeeming_counts_uses_and_respects_expiry(session):
    token = create_enrollment_token(session, max_uses=2, expires_at=NOW + timedelta(hours=1), tags={"s": "1"}, now=NOW)
    assert redeem_enrollment_token(session, token.secret, NOW) == {"s": "1"}
    assert redeem_enrollment_token(session, token.secret, NOW) == {"s": "1"}
    with pytest.raises(PermissionDeniedError) as exhausted:
        redeem_enrollment_token(session, token.secret, NOW)
    assert exhausted.value.code == "enroll_token_exhausted"
    other = create_enrollment_token(session, max_uses=5, expires_at=NOW, tags={}, now=NOW)
    with pytest.raises(PermissionDeniedError) as expired:
        redeem_enrollment_token(session, other.secret, NOW)
    assert expired.value.code == "enroll_token_expired"
    with pytest.raises(AuthenticationError):
        redeem_enrollment_token(session, "mfe_unknown", NOW)


def test_the_last_use_goes_to_exactly_one_of_many_racing_devices(engine):
    sessions = session_factory(engine)
    with sessions.begin() as session:
        token = create_enrollment_token(session, max_uses=1, expires_at=None, tags={}, now=NOW)
    outcomes = []
    barrier = threading.Barrier(4)

    def race():
        barrier.wait()
        try:
            with sessions.begin() as session:
                redeem_enrollment_token(session, token.secret, NOW)
            outcomes.append("won")
        except PermissionDeniedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
