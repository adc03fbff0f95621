"""A fleet of simulated devices reporting telemetry windows straight into the store (no HTTP).

Each device has its own level of the metric (device-to-device variation) plus
window noise; devices run what the rollout engine assigns them
(``rollout_version``, the check-in's own logic), so cohorts, stages and
rollbacks are the engine's. Used by the reconciler tests on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, insert, update
from sqlalchemy.orm import Session, sessionmaker

from modelfleet.clock import ManualClock
from modelfleet.rollout import Reconciler, governing_rollout, rollout_version
from modelfleet.store import (
    BundleRow,
    Device,
    EventRow,
    ModelRow,
    SummaryRow,
    find_rollout,
    session_factory,
    set_alias,
    started_rollouts,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
WINDOW = 300
RELEASES = {"1.0.0": 1, "2.0.0": 2}


def sha(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()


@dataclass
class Effects:
    """How the new version differs from the baseline on each device."""

    confidence: float = 0.0
    errors: float = 0.0


class SimFleet:
    def __init__(self, engine: Engine, *, devices: int = 240, seed: int = 7, lab: int = 0) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = session_factory(engine)
        self.clock = ManualClock(T0)
        self.rng = np.random.default_rng(seed)
        self.ids = [f"dev-{i:04d}" for i in range(devices)]
        self.tags = {
            d: ({"lab": "true"} if i < lab else {"site": "a" if i % 2 else "b"}) for i, d in enumerate(self.ids)
        }
        self.level = dict(zip(self.ids, self.rng.normal(0.80, 0.02, devices), strict=True))
        self.running = dict.fromkeys(self.ids, "1.0.0")
        self.effects = Effects()
        with self.sessions.begin() as session:
            session.add(ModelRow(name="digits", created_at=T0))
            session.flush()
            for version, release in RELEASES.items():
                session.add(
                    BundleRow(
                        model="digits", version=version, release=release, parent=None, sha256=sha(version), size=100,
                        manifest="{}", created="2026-12-01T00:00:00Z", signed_by=[], uploaded_at=T0,
                    )
                )  # fmt: skip
            session.flush()
            set_alias(session, "digits", "stable", "1.0.0", now=T0)
            for device_id in self.ids:
                session.add(
                    Device(
                        id=device_id, public_key="k", status="accepted", tags=self.tags[device_id],
                        installed=[self._installed("1.0.0")], created_at=T0,
                    )
                )  # fmt: skip
        self.reconciler = Reconciler(self.sessions, self.clock)

    @staticmethod
    def _installed(version: str) -> dict[str, Any]:
        return {"model": "digits", "version": version, "release": RELEASES[version], "state": "committed"}

    def follow_assignments(self) -> None:
        """Every device installs what the rollout engine assigns it now (as its next check-in would)."""
        with self.engine.connect() as connection:
            rollouts = started_rollouts(connection)
        changed = {}
        for device_id in self.ids:
            rollout = governing_rollout(rollouts, "digits", self.tags[device_id])
            if rollout is None:
                continue
            bundle = rollout_version(rollout, device_id, self.tags[device_id])
            if bundle is not None and bundle.version != self.running[device_id]:
                changed[device_id] = bundle.version
        with self.sessions.begin() as session:
            for device_id, version in changed.items():
                self.running[device_id] = version
                session.execute(
                    update(Device).where(Device.id == device_id).values(installed=[self._installed(version)])
                )

    def report_window(self) -> None:
        """Every device reports the window that starts now; then the clock moves past it."""
        rows = []
        start = self.clock.now()
        for device_id in self.ids:
            new = self.running[device_id] == "2.0.0"
            confidence = self.level[device_id] + (self.effects.confidence if new else 0.0)
            confidence += self.rng.normal(0, 0.005)
            n = 100
            errors = int(self.rng.binomial(n, 0.01 + (self.effects.errors if new else 0.0)))
            rows.append({
                "id": uuid.uuid4().hex, "device_id": device_id, "model": "digits", "version": self.running[device_id],
                "role": "active", "cohort": None, "window_start": start, "window_seconds": WINDOW, "n": n,
                "errors": errors, "fallbacks": 0, "timeouts": 0, "n_labelled": 0, "n_correct": 0, "n_scored": n,
                "confidence_sum": confidence * n, "confidence_sum_sq": confidence**2 * n, "latency_sum_ms": 2.0 * n,
                "body": {}, "received_at": start,
            })  # fmt: skip
        with self.engine.begin() as connection:
            connection.execute(insert(SummaryRow), rows)
        self.clock.advance(WINDOW)

    def event(self, device_id: str, kind: str, version: str = "2.0.0") -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(EventRow),
                [{
                    "id": uuid.uuid4().hex, "device_id": device_id, "kind": kind, "model": "digits",
                    "version": version, "at": self.clock.now(), "reason": None, "detail": {},
                    "received_at": self.clock.now(),
                }],
            )  # fmt: skip

    def step(self) -> list[str]:
        """Devices follow assignments, report one window, and the reconciler looks."""
        self.follow_assignments()
        self.report_window()
        return self.reconciler.tick()

    def run(self, rollout_id: str, *, until: set[str], max_windows: int = 60) -> str:
        """Step until the rollout reaches one of ``until``; return its state."""
        for _ in range(max_windows):
            self.step()
            state = self.state(rollout_id)
            if state in until:
                return state
        return self.state(rollout_id)

    def state(self, rollout_id: str) -> str:
        with self.sessions() as session:
            return find_rollout(session, rollout_id).state

    def later(self, seconds: float) -> datetime:
        return self.clock.now() + timedelta(seconds=seconds)


@pytest.fixture
def sim_fleet(engine: Engine):
    """Build a :class:`SimFleet` on the test's database (SQLite and PostgreSQL)."""

    def build(**options: Any) -> SimFleet:
        return SimFleet(engine, **options)

    return build
