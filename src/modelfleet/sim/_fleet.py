"""``Fleet``: N virtual devices and a real server on one simulated clock, stepped in rounds.

One round is one telemetry window of fleet time: every online device reads its
sensor and runs the readings through its Predictor, the clock moves to the end
of the window, every device's agent steps (enroll, check in, install, send),
then the server's reconciler looks once and the drift job runs once. A day of
fleet time (288 windows of 5 minutes) passes in as long as 288 rounds take.

Each round is written down (:class:`Round`): what runs where, the true and the
estimated accuracy per version, the drift share, the rollouts' states; the
report and the tests read these.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import resource
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.agent import RuntimeConfig
from modelfleet.bundle import DeviceProfile
from modelfleet.rollout import DriftPolicy
from modelfleet.sim._clock import SharedClock
from modelfleet.sim._device import DeviceSpec, Fixture, Tally, VirtualDevice
from modelfleet.sim._scenario import Scenario
from modelfleet.sim._server import FleetServer, RetrainInbox
from modelfleet.sim._training import MODEL

__all__ = ["T0", "Fleet", "Round", "VersionRound"]

log = logging.getLogger(__name__)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
"""Where fleet time starts (a window boundary)."""
_GIB = 1024**3
_MAX_OPEN_FILES = 1 << 20
# Each device's inline Predictor has a watchdog thread that wakes every quarter of this bound. At 30 s, 5,000
# devices woke 670 threads a second, each taking the GIL from the simulator's one busy thread (load average ~200).
_INFERENCE_BOUND_S = 3600.0


@dataclass(frozen=True, slots=True)
class VersionRound:
    """One version in one round: devices running it, true and estimated accuracy (device-side tallies)."""

    devices: int
    n: int
    true_accuracy: float | None
    estimated_accuracy: float | None


@dataclass(frozen=True, slots=True)
class Round:
    """What one round of the simulation saw."""

    index: int
    at: datetime
    elapsed_s: float
    online: int
    running: dict[str, int]
    versions: dict[str, VersionRound]
    gain: float
    drift_share: float | None
    drift_version: str | None
    rollouts: dict[str, str]
    failed_steps: int
    power_cuts: int


@dataclass(slots=True)
class _Counters:
    failed_steps: int = 0
    power_cuts: int = 0


@dataclass(slots=True)
class FleetLog:
    """Everything a run wrote down."""

    rounds: list[Round] = field(default_factory=list)
    notes: list[tuple[datetime, str]] = field(default_factory=list)


def _shares(names: list[str], shares: list[float], count: int, rng: np.random.Generator) -> list[str]:
    weights = np.asarray(shares, dtype=np.float64)
    picks = rng.choice(len(names), size=count, p=weights / weights.sum())
    return [names[i] for i in picks]


def device_specs(scenario: Scenario, count: int, seed: int) -> list[DeviceSpec]:
    """The fleet of a scenario: hardware and site by their shares, sensor gain and aging per device."""
    rng = np.random.default_rng([seed, 1])
    hardware = _shares([h.name for h in scenario.hardware], [h.share for h in scenario.hardware], count, rng)
    sites = {site.name: site for site in scenario.sites}
    placed = _shares(list(sites), [s.share for s in scenario.sites], count, rng)
    gains = rng.normal(scenario.sensor.gain, scenario.sensor.gain_spread, count)
    aging = rng.uniform(0.7, 1.3, count)
    outage_draw = rng.random((count, len(scenario.links.outages)))
    cuts = rng.random(count) < scenario.power_cuts.share
    specs = []
    for index in range(count):
        site = sites[placed[index]]
        outages = tuple(
            (o.start.total_seconds(), o.end.total_seconds())
            for k, o in enumerate(scenario.links.outages)
            if outage_draw[index, k] < o.share
        )
        specs.append(
            DeviceSpec(
                device_id=f"{scenario.name[:24]}-{index:05d}",
                tags={"hw": hardware[index], "site": site.name},
                gain=float(gains[index]),
                aging=float(aging[index]),
                temperature=site.temperature,
                joins_at=site.joins.total_seconds(),
                outages=outages,
                power_cut=scenario.power_cuts.at if cuts[index] else None,
            )
        )
    return specs


def _profile() -> DeviceProfile:
    return DeviceProfile(
        arch=platform.machine(),
        runtimes={"onnxruntime": importlib.metadata.version("onnxruntime")},
        ram_bytes=4 * _GIB,
        disk_free_bytes=16 * _GIB,
    )


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (a fleet holds one per device); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # not allowed here: the soft limit stays
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft


def drift_policy(scenario: Scenario) -> DriftPolicy:
    """The scenario's drift policy: the server's defaults, a lower inference floor, and its overrides."""
    options: dict[str, Any] = {"min_inferences": min(100, scenario.inferences), "group_by": "site"}
    options.update(scenario.drift)
    return DriftPolicy(**options)


class Fleet:
    """A simulated fleet of real agents against a real server on loopback, on one manual clock.

    Args:
        scenario: the fleet, sensors, links.
        devices: fleet size.
        workdir: the server's data directory goes here (devices live in a temp dir on tmpfs when it exists).
        seed: every random draw derives from it.
        on_note: told each line of the timeline as it happens.
    """

    def __init__(
        self,
        scenario: Scenario,
        devices: int,
        workdir: Path,
        *,
        seed: int | None = None,
        on_note: Callable[[datetime, str], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        raise_open_files_limit()
        shm = Path("/dev/shm")  # noqa: S108 - device stores on tmpfs: thousands of fsyncs per round cost nothing
        self._device_root = Path(tempfile.mkdtemp(prefix="modelfleet-sim-", dir=shm if shm.is_dir() else None))
        self.clock = SharedClock(self._device_root / "clock", T0)
        self.window = int(scenario.window.total_seconds())
        self.inbox = RetrainInbox()
        self.log = FleetLog()
        self._on_note = on_note
        lookback = self.window * (drift_policy(scenario).windows + 2)
        self.server = FleetServer(
            workdir / "server",
            self.clock,
            poll_seconds=self.window,
            drift_policy=drift_policy(scenario),
            lookback_seconds=max(60, lookback),
            inbox=self.inbox,
        )
        self.specs = device_specs(scenario, devices, self.seed)
        fixture = Fixture(
            root=self._device_root,
            server=self.server.url,
            trusted_pem=self.server.trusted_pem,
            clock=self.clock,
            runtime=RuntimeConfig(isolation="inline", timeout_s=_INFERENCE_BOUND_S, window_seconds=self.window),
            profile=_profile(),
            model=MODEL,
            drop=scenario.links.drop,
        )
        self._fixture = fixture
        try:
            groups: dict[tuple[tuple[str, str], ...], int] = {}
            for spec in self.specs:
                key = tuple(sorted(spec.tags.items()))
                groups[key] = groups.get(key, 0) + 1
            for key, uses in groups.items():
                fixture.tokens[key] = self.server.enrollment_token(uses, dict(key))
            self.devices = [
                VirtualDevice(spec, fixture, seed=self.seed * 1_000_003 + i) for i, spec in enumerate(self.specs)
            ]
        except BaseException:
            self.server.close()
            raise
        self.rollouts: dict[str, str] = {}  # version -> rollout id
        self.experiments: dict[str, str] = {}  # candidate version -> experiment id
        self.retrain_events: list[dict[str, Any]] = []
        self._counters = _Counters()

    # ------------------------------------------------------------ time

    @property
    def elapsed(self) -> float:
        """Seconds of fleet time since the start."""
        return (self.clock.now() - T0).total_seconds()

    def gain_loss(self, elapsed: float | None = None) -> float:
        """The scenario's sensor gain lost to aging by ``elapsed`` (fraction of the starting gain)."""
        t = self.elapsed if elapsed is None else elapsed
        lost = 0.0
        for aging in self.scenario.sensor.aging:
            start, end = aging.start.total_seconds(), aging.end.total_seconds()
            lost += aging.loss * min(1.0, max(0.0, (t - start) / (end - start)))
        return min(lost, 0.95)

    def note(self, text: str) -> None:
        """Write a line on the timeline (fleet time)."""
        at = self.clock.now()
        self.log.notes.append((at, text))
        if self._on_note is not None:
            self._on_note(at, text)

    # ------------------------------------------------------------ one round

    def round(self) -> Round:
        """Infer one window on every online device, advance the clock, step every agent, reconcile, check drift."""
        start, elapsed = self.clock.now(), self.elapsed
        loss = self.gain_loss(elapsed)
        online = [device for device in self.devices if device.joined(elapsed)]
        for device in online:
            device.infer(self.scenario.inferences, device.signal(loss), self.scenario.labelled)
        self.clock.advance(self.window)
        now_elapsed = self.elapsed
        for device in online:
            before = device.power_cuts
            result = device.step(now_elapsed)
            if result is not None and not result.ok:
                self._counters.failed_steps += 1
            self._counters.power_cuts += device.power_cuts - before
        moved = self.server.reconcile()
        states = self._rollout_states() if moved or self.rollouts else {}
        share, drift_version = self._drift()
        record = self._record(start, elapsed, online, loss, share, drift_version, states)
        self.log.rounds.append(record)
        return record

    def _drift(self) -> tuple[float | None, str | None]:
        checks = self.server.check_drift()
        share, version, most = None, None, -1
        for check in checks:
            decision = check.drift.result.decision
            if decision.devices > most:  # the version most devices run: the one the report follows
                share, version, most = decision.share, check.drift.result.version, decision.devices
            if check.requested:
                groups = ", ".join(f"{g.group} {g.share:.0%}" for g in decision.groups) if decision.groups else ""
                limit = self.server.drift.policy.retrain_share
                self.note(
                    f"drift monitor: {decision.drifting_devices} of {decision.devices} devices on "
                    f"{check.drift.result.version} drift ({decision.share:.0%} >= {limit:.0%}"
                    f"{'; ' + groups if groups else ''}); retrain.requested sent to the webhook"
                )
        fresh = self.inbox.received()[len(self.retrain_events) :]
        self.retrain_events.extend(fresh)
        return share, version

    def _rollout_states(self) -> dict[str, str]:
        return {version: self.server.rollout(rid)["state"] for version, rid in self.rollouts.items()}

    def _record(  # noqa: PLR0917 - one call site, all of it the round's own state
        self,
        start: datetime,
        elapsed: float,
        online: list[VirtualDevice],
        loss: float,
        share: float | None,
        drift_version: str | None,
        states: dict[str, str],
    ) -> Round:
        running: dict[str, int] = {}
        totals: dict[str, Tally] = {}
        devices_on: dict[str, int] = {}
        for device in online:
            version = device.version or "none"
            running[version] = running.get(version, 0) + 1
            for name, tally in device.take_tally().items():
                total = totals.setdefault(name, Tally())
                total.n += tally.n
                total.correct += tally.correct
                total.confidence += tally.confidence
                devices_on[name] = devices_on.get(name, 0) + 1
        versions = {
            name: VersionRound(
                devices=devices_on[name],
                n=t.n,
                true_accuracy=t.correct / t.n if t.n else None,
                estimated_accuracy=t.confidence / t.n if t.n else None,
            )
            for name, t in sorted(totals.items())
        }
        gains = [d.signal(loss).gain for d in online] or [0.0]
        return Round(
            index=len(self.log.rounds),
            at=start,
            elapsed_s=elapsed,
            online=len(online),
            running=dict(sorted(running.items())),
            versions=versions,
            gain=float(np.mean(gains)),
            drift_share=share,
            drift_version=drift_version,
            rollouts=states,
            failed_steps=self._counters.failed_steps,
            power_cuts=self._counters.power_cuts,
        )

    # ------------------------------------------------------------ operator

    def push(self, bundle: Path, version: str) -> None:
        """Upload a bundle."""
        self.server.push(bundle)
        self.note(f"pushed {MODEL} {version} ({bundle.stat().st_size} bytes, signed)")

    def pin(self, version: str) -> None:
        """Pin a version on every device and make it stable."""
        self.server.pin(MODEL, version)
        self.note(f"pinned {MODEL} {version} on every device; stable = {version}")

    def start_rollout(self, version: str, spec: dict[str, Any]) -> str:
        """Start a rollout of ``version`` with the scenario's spec fields."""
        body = {**spec, "model": MODEL, "version": version}
        rollout_id = self.server.start_rollout(body)
        self.rollouts[version] = rollout_id
        stages = " -> ".join(f"{s['percent']:g}%" for s in spec.get("stages", []))
        gates = ", ".join(f"{g['metric']} (margin {g['margin']})" for g in spec.get("gates", []))
        self.note(
            f"rollout {rollout_id} of {version} started: holdout {spec.get('holdout_percent', 10)}%, stages {stages}; "
            f"gates {gates}"
        )
        return rollout_id

    def start_experiment(self, stable: str, version: str, spec: dict[str, Any]) -> str:
        """Start a shadow, time-slice or A/B experiment of ``version`` against ``stable`` (the spec's other fields)."""
        body = {
            "model": MODEL,
            "variants": [{"version": stable, "share": 50}, {"version": version, "share": 50}],
            "window_seconds": self.window,
            **spec,
        }
        experiment_id = self.server.start_experiment(body)
        self.experiments[version] = experiment_id
        metrics = ", ".join(m["metric"] for m in spec.get("metrics", []))
        self.note(f"{spec['kind']} experiment {experiment_id}: {version} against {stable}; metrics {metrics}")
        return experiment_id

    def experiment(self, version: str) -> dict[str, Any]:
        """The server's view of the experiment of ``version``, with its analysis."""
        return self.server.experiment(self.experiments[version])

    def rollout(self, version: str) -> dict[str, Any]:
        """The server's view of the rollout of ``version``."""
        return self.server.rollout(self.rollouts[version])

    def run_until(self, done: Callable[[Round], bool], max_rounds: int) -> Round:
        """Run rounds until ``done`` says so (or ``max_rounds`` passed); the last round."""
        last = self.round()
        for _ in range(max_rounds - 1):
            if done(last):
                break
            last = self.round()
        return last

    # ------------------------------------------------------------ accounting

    def without_model(self) -> list[str]:
        """Online devices with no working model (nothing current, or a current model the Predictor cannot run)."""
        elapsed = self.elapsed
        return [d.spec.device_id for d in self.devices if d.joined(elapsed) and d.predictor is None]

    def summaries_sent(self) -> int:
        """Summaries the devices' agents had acknowledged by the server."""
        return sum(device.summaries_sent for device in self.devices)

    def summaries_stored(self) -> int:
        """Summaries the server stored, over every version."""
        return sum(int(w["summaries"]) for w in self.server.windows(MODEL))

    def close(self) -> None:
        """Flush and close every device; stop the inbox (the server stays up until :meth:`stop_server`)."""
        for device in self.devices:
            device.close()
        self._fixture.transport.close()
        self.inbox.close()

    def stop_server(self) -> None:
        """Stop the server and remove the devices' directories."""
        self.server.close()
        self.clock.close()
        shutil.rmtree(self._device_root, ignore_errors=True)
