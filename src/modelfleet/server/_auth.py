"""Who is calling: admin bearer tokens with a role, device credentials; one indexed read each.

Roles are ordered: ``viewer`` reads, ``release-manager`` also manages bundles
and aliases, ``admin`` may do everything. A device credential is valid only
while its device is ``accepted``: revoking clears it, so the next request fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection

from modelfleet.errors import AuthenticationError, PermissionDeniedError
from modelfleet.server._state import State
from modelfleet.store import AdminPrincipal, AdminRole, DeviceRecord, admin_by_secret, device_by_credential

__all__ = [
    "Admin",
    "CallingDevice",
    "ReleaseManager",
    "Viewer",
    "accepted_device",
    "actor_of",
    "bearer_token",
    "calling_device",
    "require_role",
]

_RANK: dict[AdminRole, int] = {"viewer": 0, "release-manager": 1, "admin": 2}

admin_bearer = HTTPBearer(scheme_name="AdminToken", description="An admin API token (`mfa_...`).", auto_error=False)
device_bearer = HTTPBearer(
    scheme_name="DeviceCredential", description="The credential enrollment issued (`mfd_...`).", auto_error=False
)
Bearer = HTTPAuthorizationCredentials | None


def require_role(role: AdminRole) -> Callable[..., Awaitable[AdminPrincipal]]:
    """A dependency that admits admin tokens holding ``role`` or a higher one."""

    async def admitted(state: State, bearer: Annotated[Bearer, Depends(admin_bearer)]) -> AdminPrincipal:
        if bearer is None:
            raise AuthenticationError("an admin bearer token is required", code="no_credential")
        with state.engine.connect() as connection:
            principal = admin_by_secret(connection, bearer.credentials)
        if principal is None:
            raise AuthenticationError("the admin token is not known or was revoked", code="bad_credential")
        if _RANK[principal.role] < _RANK[role]:
            msg = f"the {principal.role} role may not do this; it needs {role}"
            raise PermissionDeniedError(msg, code="role_forbidden")
        return principal

    return admitted


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header.

    Raises:
        AuthenticationError: no bearer token (``no_credential``).
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("a device credential is required", code="no_credential")
    return token.strip()


def accepted_device(connection: Connection, credential: str) -> DeviceRecord:
    """The accepted device holding ``credential``, by one indexed read.

    Raises:
        AuthenticationError: unknown, revoked or not yet accepted (``bad_credential``).
    """
    device = device_by_credential(connection, credential)
    if device is None or device.status != "accepted":
        raise AuthenticationError("the device credential is not known or was revoked", code="bad_credential")
    return device


async def calling_device(state: State, bearer: Annotated[Bearer, Depends(device_bearer)]) -> DeviceRecord:
    """The accepted device whose credential the request carries.

    The read is synchronous on purpose: an indexed read costs less than a thread hop.
    """
    if bearer is None:
        raise AuthenticationError("a device credential is required", code="no_credential")
    with state.engine.connect() as connection:
        return accepted_device(connection, bearer.credentials)


def actor_of(principal: AdminPrincipal) -> str:
    """How the audit log names an admin token."""
    return f"token:{principal.id}:{principal.name}"


Viewer = Annotated[AdminPrincipal, Depends(require_role("viewer"))]
ReleaseManager = Annotated[AdminPrincipal, Depends(require_role("release-manager"))]
Admin = Annotated[AdminPrincipal, Depends(require_role("admin"))]
CallingDevice = Annotated[DeviceRecord, Depends(calling_device)]
