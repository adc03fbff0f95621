"""Bundle downloads with single-range ``Range`` support, only for the caller's own artifacts.

A device may fetch a bundle that its desired state names or that it reports
installed, and a delta its desired state offers; anything else is 404, so a device cannot even learn whether another
device's artifact exists. Ranges follow RFC 9110 for one range per request
(``a-b``, ``a-``, ``-n``); a malformed, multi-range or unsatisfiable range is
416 with ``Content-Range: bytes */size``, so a resuming agent can start over.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import Response
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import Connection

from modelfleet.errors import NotFoundError
from modelfleet.protocol import DesiredModel
from modelfleet.server._errors import ApiError
from modelfleet.server._state import ServerState
from modelfleet.store import DeviceRecord, bundles_by_sha256, delta_by_sha256

__all__ = ["artifact_path", "byte_range", "ranged_file"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 256 * 1024
_MEDIA = "application/octet-stream"


def artifact_path(state: ServerState, device: DeviceRecord, sha256: str) -> Path:
    """The local file of an artifact the device may download.

    Raises:
        NotFoundError: no such artifact, or it is neither assigned to nor installed on the device.
    """
    with state.engine.connect() as connection:
        versions = set(bundles_by_sha256(connection, sha256))
        if versions and not _installed(device, versions):
            versions = versions if _desired(state, connection, device, sha256) else set()
        allowed = bool(versions) or (
            bool(delta_by_sha256(connection, sha256)) and _desired(state, connection, device, sha256)
        )
    if not allowed:
        msg = f"no artifact {sha256} for this device"
        raise NotFoundError(msg, code="unknown_artifact")
    return state.blobs.path(sha256)


def _desired(state: ServerState, connection: Connection, device: DeviceRecord, sha256: str) -> bool:
    """Does the device's desired state link to this blob (as its bundle or its delta)."""
    desired = state.resolver(connection, device, state.config.public_url)
    return any(sha256 in _links(d) for d in desired)


def _links(desired: DesiredModel) -> set[str | None]:
    """The blobs one desired model links to: its bundle, its delta, a shadow or time-slice candidate."""
    candidate, delta = desired.candidate, desired.delta
    return {desired.artifact.sha256, delta.sha256 if delta else None, candidate.artifact.sha256 if candidate else None}


def _installed(device: DeviceRecord, versions: set[tuple[str, str]]) -> bool:
    return any((entry.get("model"), entry.get("version")) in versions for entry in device.installed)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(start, end_exclusive)`` a ``Range`` header asks for; ``None`` for the whole file.

    Raises:
        ApiError: 416 for a malformed, multi-range or unsatisfiable range.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    first, last = (match.group(1), match.group(2)) if match else ("", "")
    if first:
        start = int(first)
        end = min(int(last), size - 1) + 1 if last else size
        if start < size and (not last or int(last) >= start):
            return start, end
    elif last and int(last) > 0 and size > 0:
        return max(size - int(last), 0), size
    raise ApiError(
        416,
        "range_not_satisfiable",
        f"cannot serve range {header!r} of a {size}-byte artifact; ask for one range 'bytes=a-b', 'a-' or '-n'",
        field="Range",
        headers={"Content-Range": f"bytes */{size}"},
    )


def ranged_file(path: Path, sha256: str, range_header: str | None) -> Response:
    """The file, or the part of it the ``Range`` header asks for (206)."""
    size = path.stat().st_size
    span = byte_range(range_header, size)
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"'}
    if span is None:
        return FileResponse(path, media_type=_MEDIA, headers=headers)
    start, end = span
    headers |= {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": str(end - start)}
    return StreamingResponse(_slice(path, start, end), status_code=206, media_type=_MEDIA, headers=headers)


async def _slice(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        await handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = await handle.read(min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
