"""Admin and enrollment tokens: the secret is returned once, only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, cast, get_args

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.orm import Session

from modelfleet.errors import AuthenticationError, PermissionDeniedError
from modelfleet.store._tables import AdminToken, EnrollmentToken

__all__ = [
    "ADMIN_ROLES",
    "AdminPrincipal",
    "AdminRole",
    "IssuedEnrollmentToken",
    "IssuedToken",
    "admin_by_secret",
    "create_admin_token",
    "create_enrollment_token",
    "new_secret",
    "redeem_enrollment_token",
    "secret_hash",
]

AdminRole = Literal["admin", "release-manager", "viewer"]
ADMIN_ROLES: tuple[AdminRole, ...] = get_args(AdminRole)

_admin_tokens = cast("Table", AdminToken.__table__)
_enrollment_tokens = cast("Table", EnrollmentToken.__table__)


def new_secret(prefix: str) -> str:
    """A fresh random bearer secret (256 bits) with a prefix that says what it is for."""
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """The hex sha256 a secret is stored and looked up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new admin token; ``secret`` exists only in this object, never in the database."""

    id: int
    name: str
    role: AdminRole
    secret: str


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who an admin request comes from."""

    id: int
    name: str
    role: AdminRole


def create_admin_token(
    session: Session, *, name: str, role: AdminRole, now: datetime, created_by: str | None = None
) -> IssuedToken:
    """Store a new admin token's hash and return its secret (shown once)."""
    if role not in ADMIN_ROLES:
        msg = f"unknown role {role!r}; roles are {', '.join(ADMIN_ROLES)}"
        raise ValueError(msg)
    secret = new_secret("mfa_")
    row = AdminToken(name=name, role=role, token_hash=secret_hash(secret), created_at=now, created_by=created_by)
    session.add(row)
    session.flush()
    return IssuedToken(row.id, name, role, secret)


_BY_SECRET = select(_admin_tokens.c.id, _admin_tokens.c.name, _admin_tokens.c.role).where(
    _admin_tokens.c.token_hash == bindparam("token_hash"), _admin_tokens.c.revoked_at.is_(None)
)


def admin_by_secret(conn: Connection, secret: str) -> AdminPrincipal | None:
    """The unrevoked admin token holding ``secret``, by one indexed read."""
    row = conn.execute(_BY_SECRET, {"token_hash": secret_hash(secret)}).first()
    if row is None or row.role not in ADMIN_ROLES:
        return None
    return AdminPrincipal(row.id, row.name, row.role)


@dataclass(frozen=True, slots=True)
class IssuedEnrollmentToken:
    """A new enrollment token; ``secret`` is shown once."""

    id: int
    secret: str
    max_uses: int
    expires_at: datetime | None
    tags: Mapping[str, str] = field(default_factory=dict)


def create_enrollment_token(
    session: Session,
    *,
    max_uses: int,
    expires_at: datetime | None,
    tags: Mapping[str, str],
    now: datetime,
    created_by: str | None = None,
) -> IssuedEnrollmentToken:
    """Store a token that lets up to ``max_uses`` devices enroll without approval until ``expires_at``."""
    if max_uses < 1:
        msg = f"max_uses must be at least 1, got {max_uses}"
        raise ValueError(msg)
    secret = new_secret("mfe_")
    row = EnrollmentToken(
        token_hash=secret_hash(secret),
        tags=dict(tags),
        max_uses=max_uses,
        uses=0,
        expires_at=expires_at,
        created_at=now,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return IssuedEnrollmentToken(row.id, secret, max_uses, expires_at, dict(tags))


def redeem_enrollment_token(session: Session, secret: str, now: datetime) -> dict[str, str]:
    """Count one use of an enrollment token and return the tags it applies.

    The use is counted by one conditional UPDATE, so two devices racing for
    the last use cannot both get it.

    Raises:
        AuthenticationError: no such token (``unknown_enroll_token``).
        PermissionDeniedError: the token expired or has no uses left.
    """
    token_hash = secret_hash(secret)
    t = _enrollment_tokens
    counted = session.execute(
        update(t)
        .where(
            t.c.token_hash == token_hash, t.c.uses < t.c.max_uses, (t.c.expires_at.is_(None)) | (t.c.expires_at > now)
        )
        .values(uses=t.c.uses + 1)
        .returning(t.c.tags)
    ).first()
    if counted is not None:
        return {str(k): str(v) for k, v in (counted.tags or {}).items()}
    row = session.execute(select(t.c.expires_at).where(t.c.token_hash == token_hash)).first()
    if row is None:
        raise AuthenticationError("the enrollment token is not known", code="unknown_enroll_token")
    if row.expires_at is not None and row.expires_at <= now:
        raise PermissionDeniedError("the enrollment token has expired", code="enroll_token_expired")
    raise PermissionDeniedError("the enrollment token has no uses left", code="enroll_token_exhausted")
