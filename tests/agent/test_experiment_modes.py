"""Shadow and time-slice experiments end to end: a real server process, real agents, real Predictors on ONNX Runtime.

The server runs in its own process on a shared simulated clock (``modelfleet.sim``'s
``FleetServer``), so telemetry windows pass in milliseconds. Devices run v1 (the
digits MLP); the candidate v2 is a truly different model (two hidden units), so the
two disagree on some inputs and v2 is less accurate.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from modelfleet.agent import Agent, AgentConfig, HealthPolicy, Predictor, RuntimeConfig, ServedPredictor, open_served
from modelfleet.bundle import BuildOptions, DeviceProfile, ValidationSet, build_bundle
from modelfleet.protocol import TimeSlice
from modelfleet.rollout import DriftPolicy
from modelfleet.sim import ModelCase, digits_mlp
from modelfleet.sim._clock import SharedClock
from modelfleet.sim._server import FleetServer, RetrainInbox
from modelfleet.stats import time_slice_schedule

MODEL = "digits"
SLOT = 60  # seconds: the experiments' window, the Predictors' telemetry window
START = datetime(2026, 12, 7, tzinfo=UTC)  # a whole block of four slots starts here
ROWS = 60


@dataclass
class Fleet:
    server: FleetServer
    clock: SharedClock
    case: ModelCase
    root: Path


@pytest.fixture(scope="module")
def fleet(digits_case: ModelCase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("modes")
    clock = SharedClock(root / "clock", START)
    inbox = RetrainInbox()
    server = FleetServer(
        root / "server", clock, poll_seconds=60, drift_policy=DriftPolicy(), lookback_seconds=600, inbox=inbox
    )
    active = digits_case  # the session's digits MLP, 8 hidden units
    candidate = digits_mlp(root / "v2.onnx", hidden=2)
    validation = ValidationSet(inputs={"X": active.x_val}, labels=active.y_val)
    for release, (version, case) in enumerate((("1.0.0", active), ("2.0.0", candidate)), start=1):
        out = root / f"digits-{version}.mfb"
        options = BuildOptions(name=MODEL, version=version, release=release, golden_count=4)
        build_bundle(case.path, validation, [server.signing_key], out, options)
        server.push(out)
    server.pin(MODEL, "1.0.0")
    try:
        yield Fleet(server, clock, active, root)
    finally:
        server.close()
        inbox.close()
        clock.close()


class Device:
    """A device: the real agent, and an application that rebuilds its Predictor when what is served changes."""

    def __init__(self, fleet: Fleet, device_id: str, token: str, tags: dict[str, str]) -> None:
        self.fleet = fleet
        data_dir = fleet.root / device_id
        config = AgentConfig(
            server=fleet.server.url,
            device_id=device_id,
            trusted_keys=(fleet.server.trusted_pem,),
            tags=tags,
            enroll_token=token,
        )
        profile = DeviceProfile(
            arch=platform.machine(),
            runtimes={"onnxruntime": ort.__version__},
            ram_bytes=8 << 30,
            disk_free_bytes=64 << 30,
            tags=tags,
        )
        self.agent = Agent(data_dir, config, profile=profile, clock=fleet.clock, health=HealthPolicy(latency_runs=1))
        self.served: ServedPredictor | None = None

    def step(self) -> None:
        result = self.agent.step()
        assert result.ok, result.error
        if self.served is None or self.agent.serving(MODEL) != self.served.serving:
            if self.served is not None:
                self.agent.use_predictor(None)  # collects its summaries into the outbox
                self.served.close()
            config = RuntimeConfig(isolation="inline", window_seconds=SLOT)
            self.served = open_served(self.agent, MODEL, config=config, clock=self.fleet.clock)

    @property
    def predictor(self) -> Predictor:
        assert self.served is not None
        return self.served.predictor

    def close(self) -> None:
        if self.served is not None:
            self.agent.use_predictor(None)
            self.served.close()
        self.agent.close()


@pytest.fixture
def devices(fleet: Fleet, request: pytest.FixtureRequest) -> Iterator[list[Device]]:
    ring = request.node.name.removeprefix("test_")[:40]
    token = fleet.server.enrollment_token(4, {"ring": ring})
    made = [Device(fleet, f"{ring[:20]}-{i}", token, {"ring": ring}) for i in range(4)]
    for device in made:
        device.step()  # enroll, install and commit 1.0.0
        assert device.served is not None
        assert device.served.serving.mode == "active"
    try:
        yield made
    finally:
        for device in made:
            device.close()


def start(fleet: Fleet, kind: str, ring: str, **extra: Any) -> str:
    spec = {
        "model": MODEL,
        "kind": kind,
        "selector": {"ring": ring},
        "variants": [{"version": "1.0.0", "share": 50}, {"version": "2.0.0", "share": 50}],
        "metrics": [{"metric": "accuracy"}],
        "minimum_detectable_effect": 0.05,
        "window_seconds": SLOT,
        "exposure_windows": 1,
        "device_sd": 0.05,
        **extra,
    }
    reply = fleet.server.admin.post("/v1/admin/experiments", json=spec, params={"force": "true"})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def status(fleet: Fleet, experiment_id: str) -> dict[str, Any]:
    reply = fleet.server.admin.get(f"/v1/admin/experiments/{experiment_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def stop(fleet: Fleet, experiment_id: str, devices: list[Device]) -> None:
    reply = fleet.server.admin.post(f"/v1/admin/experiments/{experiment_id}/stop")
    assert reply.status_code == 200, reply.text
    for device in devices:
        device.step()
        assert device.served is not None
        assert device.served.serving.candidate is None
        assert device.predictor.mode == "active"
        assert device.agent.installer.slots.link(MODEL, "candidate") is None


def next_block(fleet: Fleet) -> None:
    """Move the clock to the start of the next block of four slots."""
    now = fleet.clock.now().timestamp()
    fleet.clock.advance((4 * SLOT) - now % (4 * SLOT))


def test_shadow_records_disagreement_and_answers_exactly_as_the_active_model(fleet, devices):
    experiment_id = start(fleet, "shadow", devices[0].agent.config.tags["ring"])
    for device in devices:
        device.step()  # the candidate installs beside 1.0.0 and the application runs both
        assert device.served is not None
        assert (device.served.serving.mode, device.predictor.versions) == ("shadow", ("1.0.0", "2.0.0"))
        assert device.agent.installer.slots.link(MODEL, "current").startswith("1.0.0-")
    x, y = fleet.case.x_val[:ROWS], fleet.case.y_val[:ROWS]
    reference = ort.InferenceSession(str(fleet.case.path), providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"X": x})[0]
    for device in devices:
        answer = device.predictor.predict(x, label=y)
        assert answer.version == "1.0.0"
        np.testing.assert_array_equal(answer.top1, expected)
        assert device.predictor.wait_shadow(10)
    fleet.clock.advance(SLOT)
    for device in devices:
        device.step()  # closes the window, sends active- and shadow-role summaries

    analysis = status(fleet, experiment_id)["analysis"]
    assert analysis["kind"] == "shadow"
    assert analysis["devices"] == [4]
    shadow = analysis["shadow"]
    assert shadow["agreement"]["devices"] == 4
    assert 0 < shadow["agreement"]["estimate"] < 1
    assert shadow["discordant"]["only_active_correct"] > shadow["discordant"]["only_candidate_correct"]
    assert shadow["active_latency_ms"] > 0
    assert shadow["candidate_latency_ms"] > 0
    (accuracy,) = [lift for lift in analysis["lifts"] if lift["metric"] == "accuracy"]
    assert accuracy["estimate"] < 0, "the two-unit candidate is less accurate"
    stop(fleet, experiment_id, devices)


def test_time_slice_alternates_by_the_schedule_and_the_analysis_sees_the_difference(fleet, devices):
    experiment_id = start(fleet, "time_slice", devices[0].agent.config.tags["ring"], exposure_windows=4)
    for device in devices:
        device.step()
        assert device.served is not None
        assert device.served.serving.mode == "time_slice"
    next_block(fleet)
    x, y = fleet.case.x_val[:ROWS], fleet.case.y_val[:ROWS]
    served: dict[str, list[str]] = {device.agent.config.device_id: [] for device in devices}
    for _ in range(4):
        for device in devices:
            schedule = device.served.serving.time_slice if device.served else None
            assert schedule is not None
            answer = device.predictor.predict(x, label=y)
            assert answer.version == ("1.0.0", "2.0.0")[schedule.version_at(fleet.clock.now())]
            served[device.agent.config.device_id].append(answer.version)
        fleet.clock.advance(SLOT)
        for device in devices:
            device.step()
    for versions in served.values():
        assert versions in (["1.0.0", "2.0.0", "2.0.0", "1.0.0"], ["2.0.0", "1.0.0", "1.0.0", "2.0.0"])

    analysis = status(fleet, experiment_id)["analysis"]
    assert analysis["kind"] == "time_slice"
    assert analysis["devices"] == [4]
    (accuracy,) = analysis["lifts"]
    assert accuracy["variant"] == "2.0.0"
    assert accuracy["estimate"] < 0, "the two-unit candidate is less accurate"
    stop(fleet, experiment_id, devices)


def test_schedule_is_the_one_the_analysis_uses():
    ids = [f"dev-{i}" for i in range(50)]
    rows = time_slice_schedule(ids, windows=8, salt="salt")
    for device_id, row in zip(ids, rows, strict=True):
        schedule = TimeSlice(slot_seconds=SLOT, order=(int(row[0]), int(row[1])))
        seen = [schedule.version_at(START + timedelta(seconds=SLOT * k + 1)) for k in range(8)]
        assert seen == row.tolist(), device_id
