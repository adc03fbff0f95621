"""The baseline of bench/checkin.py: the same stack with nothing of ours in it.

One FastAPI ``async def`` route on the check-in path that does what a check-in
cannot avoid and nothing more: hash the bearer credential, one indexed read with
stdlib ``sqlite3``, compare the ETag, answer 304 (or the stored JSON). No
validation, no middleware, no auth layer. uvicorn serves it with the same
settings as our server (2 workers, uvloop, httptools), and wrk measures it with
the same script and the same device credentials.

uvicorn's worker processes import this module by name, so the database path
comes from ``BARE_CHECKIN_DB`` (a benchmark fixture, not a modelfleet setting).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from fastapi import FastAPI, Request, Response

__all__ = ["app", "create_database"]

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
_connection: list[sqlite3.Connection] = []


def create_database(path: Path, devices: list[tuple[str, str, str]]) -> None:
    """Write ``(credential_hash, etag, body)`` rows with the index a check-in reads by."""
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("DROP TABLE IF EXISTS devices")
        connection.execute("CREATE TABLE devices (credential_hash TEXT PRIMARY KEY, etag TEXT NOT NULL, body TEXT)")
        connection.executemany("INSERT INTO devices VALUES (?, ?, ?)", devices)
    connection.close()


def _db() -> sqlite3.Connection:
    if not _connection:
        # One connection per worker process; async routes run on the event loop's one thread.
        _connection.append(sqlite3.connect(os.environ["BARE_CHECKIN_DB"], check_same_thread=False))
    return _connection[0]


@app.post("/v1/devices/checkin")
async def checkin(request: Request) -> Response:
    """Authenticate by credential hash, one indexed read, 304 when the ETag matches."""
    await request.body()
    credential = request.headers.get("authorization", "").removeprefix("Bearer ")
    digest = hashlib.sha256(credential.encode()).hexdigest()
    row = _db().execute("SELECT etag, body FROM devices WHERE credential_hash = ?", (digest,)).fetchone()
    if row is None:
        return Response(b'{"error":"unauthenticated"}', status_code=401, media_type="application/json")
    etag, body = row
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})
