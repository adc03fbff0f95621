"""Bundle upload: stream the raw body to a temporary file, verify it, then store and register it.

Nothing is stored before the bundle verified against the server's pinned keys
and threshold (ADR 0003); a refusal answers 422 with the reader's own code
(``hash_mismatch``, ``below_threshold``, ``path_traversal``...).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from modelfleet.bundle import read_bundle
from modelfleet.errors import BundleError, ConflictError, TooLargeError
from modelfleet.server._state import ServerState
from modelfleet.store import BundleRow, append_audit, register_bundle

__all__ = ["receive_upload", "register_upload"]


async def receive_upload(request: Request, directory: Path, limit: int) -> Path:
    """Write the request body to a new file in ``directory``, refusing more than ``limit`` bytes.

    Raises:
        TooLargeError: the body passed ``limit``; the partial file is removed.
    """
    path = await run_in_threadpool(_new_file, directory)
    try:
        async with await anyio.open_file(path, "wb") as handle:
            await _copy_body(request, handle, limit)
    except BaseException:
        await anyio.Path(path).unlink(missing_ok=True)
        raise
    return path


def _new_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".mfb")
    os.close(descriptor)
    return Path(name)


async def _copy_body(request: Request, handle: anyio.AsyncFile[bytes], limit: int) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            msg = f"the upload exceeds the limit of {limit} bytes"
            raise TooLargeError(msg, code="too_large")
        await handle.write(chunk)


def register_upload(state: ServerState, path: Path, uploaded_by: str) -> tuple[BundleRow, bool]:
    """Verify the uploaded file, store its bytes and register the version; return the row and whether it is new.

    Raises:
        BundleError: the bundle is refused (422 with its code).
        ConflictError: the version exists with other bytes, or its release is taken.
    """
    try:
        verified = read_bundle(path, state.trusted)
    except BundleError:
        state.metrics.uploads.labels("refused").inc()
        raise
    blob = state.blobs.put_file(path)
    try:
        with state.transaction() as session:
            row, created = register_bundle(session, verified, blob, now=state.clock.now(), uploaded_by=uploaded_by)
            if created:
                append_audit(
                    session,
                    at=row.uploaded_at,
                    actor=uploaded_by,
                    action="bundle.upload",
                    target=f"{row.model}/{row.version}",
                    detail={"sha256": row.sha256, "release": row.release},
                )
    except ConflictError:
        state.metrics.uploads.labels("conflict").inc()
        raise
    state.metrics.uploads.labels("stored" if created else "identical").inc()
    return row, created
