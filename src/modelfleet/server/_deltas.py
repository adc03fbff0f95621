"""Delta updates on the server (shared/DESIGN.md §9, ADR 0009): offered beside the full link, built lazily.

Check-ins stay cheap. Only when a device's desired version differs from the one it
reports does :class:`DeltaOffers` look up the delta (installed bundle, desired bundle,
format version): the newest delta format this server writes and the device reports it
reads (``InstalledModel.delta_formats``; format 1 when it reports none, ADR 0010 addendum).
A ready delta whose file the device reads is offered as ``delta`` next to ``artifact``;
anything else, a device sharing no format with the server included, leaves the answer as
it was. A delta nobody has built is queued in memory. The background
loop (:func:`run_delta_builds`) records it, claims it (one builder per delta across
server processes), builds it in a child process bounded in time (killed) and address
space (``RLIMIT_AS``), stores the blob, and records ``ready``, ``skipped`` (not small
enough to be worth it) or ``failed`` with the reason. The answer then changes, and
with it the ETag, so devices see the offer at their next check-in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine

from modelfleet.bundle import DELTA_READABLE_VERSIONS, delta_written_version
from modelfleet.clock import Clock
from modelfleet.protocol import UNREPORTED_DELTA_FORMATS, Artifact, DesiredModel
from modelfleet.server._desired import DesiredStateResolver, artifact_url
from modelfleet.store import (
    BlobStore,
    DeltaKey,
    DeltaRecord,
    DeviceRecord,
    bundle_file,
    claim_delta,
    find_deltas,
    finish_delta,
    request_delta,
    write_transaction,
)

__all__ = [
    "WRITTEN_FORMATS",
    "DeltaOffers",
    "DeltaSettings",
    "build_delta",
    "build_wanted",
    "delta_format_for",
    "reported_delta_formats",
    "run_delta_builds",
]

log = logging.getLogger(__name__)

_GIB = 1024**3
_MAX_CACHED = 100_000

WRITTEN_FORMATS: tuple[int, ...] = DELTA_READABLE_VERSIONS
"""The delta format versions this server's encoder writes: every version it reads."""


def reported_delta_formats(installed: Mapping[str, Any]) -> tuple[int, ...]:
    """The delta formats a stored report entry says the agent reads; format 1 if it says nothing (older agents)."""
    formats = installed.get("delta_formats", UNREPORTED_DELTA_FORMATS)
    return tuple(formats) if isinstance(formats, list | tuple) else UNREPORTED_DELTA_FORMATS


def delta_format_for(reported: Iterable[int]) -> int | None:
    """The newest delta format both this server writes and the device reads; ``None`` when they share none."""
    return max(set(reported) & set(WRITTEN_FORMATS), default=None)


class DeltaSettings(BaseModel):
    """When and how the server builds deltas (``deltas`` in ``server.json``).

    Attributes:
        enabled: offer and build deltas at all.
        check_seconds: how often the builder looks for wanted pairs.
        build_seconds: a build running longer is killed and the pair recorded as failed.
        build_memory_bytes: the builder's address-space bound; a build that needs more fails.
        max_bundle_bytes: bundles larger than this are not diffed (full download only).
        max_ratio: a delta larger than this share of the full bundle is not offered (``skipped``).
        recheck_seconds: how long a process trusts that a pair is not ready before reading it again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    check_seconds: float = Field(default=2.0, gt=0, le=3600)
    build_seconds: float = Field(default=300.0, gt=0, le=86_400)
    build_memory_bytes: int = Field(default=2 * _GIB, ge=256 * 1024 * 1024)
    max_bundle_bytes: int = Field(default=2 * _GIB, ge=1)
    max_ratio: float = Field(default=0.9, gt=0, le=1)
    recheck_seconds: float = Field(default=2.0, ge=0, le=3600)


class DeltaOffers:
    """A resolver that adds a ready delta to what another resolver decides; thread-safe.

    Args:
        inner: the resolver that decides versions (pins, rollouts, experiments).
        settings: the delta policy.
        monotonic: a clock for the not-ready cache (injectable for tests).
    """

    def __init__(
        self, inner: DesiredStateResolver, settings: DeltaSettings, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._settings = settings
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # immutable once built, kept for the process's life: the offer and the version its file is written in
        self._ready: dict[DeltaKey, tuple[Artifact, int]] = {}
        self._not_ready: dict[DeltaKey, float] = {}  # key -> when to read it again
        self._bases: dict[tuple[str, str], tuple[str, int] | None] = {}  # (model, version) -> bundle file
        self._wanted: dict[DeltaKey, int] = {}  # key -> target size, for the builder

    def invalidate(self) -> None:
        """Forward a rollout change to the inner resolver (rollout caches)."""
        invalidate = getattr(self._inner, "invalidate", None)
        if invalidate is not None:
            invalidate()

    def take_wanted(self) -> dict[DeltaKey, int]:
        """Deltas check-ins asked for since the last call (the builder's work list)."""
        with self._lock:
            wanted, self._wanted = self._wanted, {}
        return wanted

    def __call__(self, connection: Connection, device: DeviceRecord, public_url: str) -> list[DesiredModel]:
        """The inner resolver's answer plus, where one is ready, a delta from the running version the device reads."""
        desired = self._inner(connection, device, public_url)
        if not self._settings.enabled:
            return desired
        reported = {str(entry.get("model")): entry for entry in device.installed}
        return [self._with_delta(connection, entry, reported.get(entry.model), public_url) for entry in desired]

    def _with_delta(
        self, connection: Connection, desired: DesiredModel, installed: Mapping[str, Any] | None, public_url: str
    ) -> DesiredModel:
        running = None if installed is None else installed.get("version")
        if desired.delta is not None or not isinstance(running, str) or running == desired.version:
            return desired
        if desired.artifact.size > self._settings.max_bundle_bytes:
            return desired
        formats = reported_delta_formats(installed or {})
        version = delta_format_for(formats)
        if version is None:
            return desired
        base = self._base(connection, desired.model, running)
        if base is None or base[1] > self._settings.max_bundle_bytes or base[0] == desired.artifact.sha256:
            return desired
        key = (base[0], desired.artifact.sha256, version)
        ready = self._ready_delta(connection, key, desired.artifact.size, public_url)
        if ready is None or ready[1] not in formats:  # a generic delta is written as format 1 whatever was asked
            return desired
        return desired.model_copy(update={"delta": ready[0]})

    def _base(self, connection: Connection, model: str, version: str) -> tuple[str, int] | None:
        key = (model, version)
        with self._lock:
            if key in self._bases:
                return self._bases[key]
        found = bundle_file(connection, model, version)
        with self._lock:
            if len(self._bases) < _MAX_CACHED:  # bounded: versions a device may report are outside input
                self._bases[key] = found
        return found

    def _ready_delta(
        self, connection: Connection, key: DeltaKey, target_size: int, public_url: str
    ) -> tuple[Artifact, int] | None:
        """The built delta of ``key`` and the format version its file is written in; ``None`` while there is none."""
        now = self._monotonic()
        with self._lock:
            if key in self._ready:
                return self._ready[key]
            if self._not_ready.get(key, 0.0) > now:
                return None
        record = find_deltas(connection, [key]).get(key)
        with self._lock:
            if record is not None and record.status == "ready" and record.sha256 is not None:
                offer = Artifact(url=artifact_url(public_url, record.sha256), sha256=record.sha256, size=record.size)
                ready = self._ready[key] = (offer, delta_written_version(record.codec or "", record.format_version))
                return ready
            self._not_ready[key] = now + self._settings.recheck_seconds
            if record is None or record.status in {"requested", "building"}:
                self._wanted[key] = target_size
        return None


async def run_delta_builds(
    offers: DeltaOffers, engine: Engine, blobs: BlobStore, clock: Clock, settings: DeltaSettings
) -> None:
    """Build the deltas check-ins asked for, every ``settings.check_seconds`` until cancelled."""
    while True:
        await asyncio.sleep(settings.check_seconds)
        wanted = offers.take_wanted()
        if not wanted:
            continue
        try:
            await asyncio.to_thread(build_wanted, wanted, engine, blobs, clock, settings)
        except Exception:
            log.exception("delta builds failed; deltas still wanted are asked for again by check-ins")


def build_wanted(
    wanted: Mapping[DeltaKey, int], engine: Engine, blobs: BlobStore, clock: Clock, settings: DeltaSettings
) -> list[DeltaRecord]:
    """Record, claim and build each wanted delta; returns their records after the builds this call made."""
    built: list[DeltaRecord] = []
    for key, target_size in sorted(wanted.items()):
        now = clock.now()
        stale = now - timedelta(seconds=2 * settings.build_seconds)
        with write_transaction(engine) as connection:
            request_delta(connection, key, target_size, now)
            claimed = claim_delta(connection, key, now, stale)
        if not claimed:
            continue
        outcome = build_delta(blobs, key, settings)
        with write_transaction(engine) as connection:
            finish_delta(connection, key, now=clock.now(), **outcome)
            built.append(find_deltas(connection, [key])[key])
        base, target, version = key
        reason = outcome.get("reason") or outcome["status"]
        log.info("delta %s -> %s (format %d): %s", base[:12], target[:12], version, reason)
    return built


def build_delta(blobs: BlobStore, key: DeltaKey, settings: DeltaSettings) -> dict[str, Any]:
    """Build one delta in a bounded child process and store it; the columns to record, ``status`` first."""
    base, target, version = key
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelfleet-delta-") as work:
        out = Path(work) / "delta.mfd"
        command = [sys.executable, "-m", "modelfleet.bundle._delta_build", str(settings.build_memory_bytes)]
        command += [str(blobs.path(base)), str(blobs.path(target)), str(out), str(version)]
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and module, paths from the blob store
                command,
                capture_output=True,
                text=True,
                timeout=settings.build_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _failed(f"the build took longer than {settings.build_seconds:g} s", started)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return _failed(f"the builder exited with {done.returncode}: {tail}", started)
        codec = str(json.loads(done.stdout)["codec"])
        size = out.stat().st_size
        seconds = time.monotonic() - started
        full = blobs.size(target)
        if size > settings.max_ratio * full:
            reason = f"the delta ({size} bytes) is over {settings.max_ratio:g} of the bundle ({full} bytes)"
            return {"status": "skipped", "size": size, "codec": codec, "reason": reason, "build_seconds": seconds}
        stored = blobs.put_file(out)
    return {"status": "ready", "sha256": stored.sha256, "size": stored.size, "codec": codec, "build_seconds": seconds}


def _failed(reason: str, started: float) -> dict[str, Any]:
    return {"status": "failed", "reason": reason, "build_seconds": time.monotonic() - started}
