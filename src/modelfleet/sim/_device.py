"""One virtual device: the real agent and a real :class:`~modelfleet.agent.Predictor`, fed by a simulated sensor.

The device's application is the simulator: each window it reads its sensor
(:mod:`modelfleet.sim._signal`), hands the readings to the Predictor in one
batch (with the ground truth, which the Predictor only counts), and keeps its
own tally of true outcomes for the report. Then the agent steps: it collects the
Predictor's summaries into its outbox, checks in over HTTP, installs what the
server wants and sends the outbox. When the installed version changed, the
application loads a new Predictor on what the agent serves (with a shadow or
time-slice experiment's candidate beside the active version).

Links and power cuts are simulated at the edges of the real code: the device
API client gets a transport that fails while the link is down, and the
installer a checkpoint that cuts the power at a chosen install step (the device
then "boots": a new agent on the same data directory resumes the install).

Open files are what bound a fleet in one process, so an idle device holds one:
the shared lock on the version its Predictor runs. Every device's link sends
through the fleet's one connection pool (:func:`shared_transport`; requests are
real HTTP on loopback, sequential, so the pool holds a socket or two instead of
two keep-alive sockets per device), and the outbox (SQLite in WAL mode: three
files) is open only while the agent steps or the application flushes into it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from modelfleet.agent import (
    Agent,
    AgentConfig,
    CrashPoint,
    DeviceClient,
    Downloader,
    DownloadPolicy,
    HealthPolicy,
    HttpClient,
    HttpTransport,
    Installer,
    Outbox,
    Predictor,
    Request,
    Response,
    RuntimeConfig,
    ServedPredictor,
    Serving,
    StepResult,
    Transport,
    open_served,
)
from modelfleet.agent._http import ExchangeError
from modelfleet.bundle import DeviceProfile
from modelfleet.sim._clock import SharedClock
from modelfleet.sim._signal import SensorSignal, sensor_readings
from modelfleet.telemetry import Event

__all__ = ["DeviceSpec", "LinkDownError", "PowerCut", "Tally", "VirtualDevice", "shared_transport"]

log = logging.getLogger(__name__)


class PowerCut(BaseException):
    """The simulated power cut at an install step; the device boots again afterwards.

    A ``BaseException``, so no ``except Exception`` on the way out of the agent swallows it.
    """


class LinkDownError(ExchangeError):
    """The simulated link is down (outage or a dropped request)."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Who a virtual device is and how its sensor behaves.

    Attributes:
        device_id: the device id.
        tags: hardware and site tags (as its enrollment token assigns them).
        gain: its sensor's gain at the start.
        aging: how fast it ages relative to the scenario's aging (0.7 to 1.3).
        temperature: the site's temperature offset.
        joins_at: seconds after the start at which the device comes online.
        outages: (start, end) seconds of fleet time its link is down.
        power_cut: cut the power at this install step, once.
    """

    device_id: str
    tags: dict[str, str]
    gain: float
    aging: float
    temperature: float
    joins_at: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()
    power_cut: CrashPoint | None = None


@dataclass(slots=True)
class Tally:
    """True outcomes of one version on one device in one window (what the report compares estimates with)."""

    n: int = 0
    correct: int = 0
    confidence: float = 0.0


_TLS: list[ssl.SSLContext] = []  # one context for every device's link: loading the CA store costs ~30 ms each


def _tls() -> ssl.SSLContext:
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


def shared_transport() -> HttpTransport:
    """The connection pool every device of a simulator process sends through (closed with the fleet)."""
    return HttpTransport(ssl_context=_tls(), max_idle_per_origin=64)


class _Link(Transport):
    """The device's link: the shared real HTTP transport, failing while the simulated link is down."""

    def __init__(self, shared: Transport, up: Callable[[], bool]) -> None:
        self._shared = shared
        self._up = up

    def send(self, request: Request) -> Response:
        """Send through the shared pool, or fail as a link that is down."""
        if not self._up():
            msg = f"{request.url}: link down (simulated)"
            raise LinkDownError(msg)
        return self._shared.send(request)

    def close(self) -> None:
        """Leave the shared pool open: it outlives the device (the fleet closes it)."""


@dataclass(slots=True)
class Fixture:
    """What every device of a fleet shares."""

    root: Path
    server: str
    trusted_pem: str
    clock: SharedClock
    runtime: RuntimeConfig
    profile: DeviceProfile
    model: str
    drop: float
    tokens: dict[tuple[tuple[str, str], ...], str] = field(default_factory=dict)
    transport: Transport = field(default_factory=shared_transport)


class VirtualDevice:
    """A simulated device: data directory, agent, Predictor, sensor, link."""

    def __init__(self, spec: DeviceSpec, fixture: Fixture, seed: int) -> None:
        self.spec = spec
        self.fixture = fixture
        self.data_dir = fixture.root / spec.device_id
        self.rng = np.random.default_rng(seed)
        self._jitter = random.Random(seed)  # noqa: S311 - simulation, not security
        self.predictor: Predictor | None = None
        self._served: ServedPredictor | None = None
        self.serving: Serving | None = None
        self.slot: str | None = None
        self.version: str | None = None
        self.tally: dict[str, Tally] = {}
        self.power_cuts = 0
        self.failed_steps = 0
        self.summaries_sent = 0
        self._cut_pending = spec.power_cut is not None
        self._link_now = True
        self._downloads: HttpClient | None = None
        self.agent = self._boot()

    # ------------------------------------------------------------ lifecycle

    def _boot(self) -> Agent:
        config = AgentConfig(
            server=self.fixture.server,
            device_id=self.spec.device_id,
            trusted_keys=(self.fixture.trusted_pem,),
            tags=self.spec.tags,
            enroll_token=self.fixture.tokens[tuple(sorted(self.spec.tags.items()))],
        )
        config.save(self.data_dir)
        profile = DeviceProfile(
            arch=self.fixture.profile.arch,
            runtimes=dict(self.fixture.profile.runtimes),
            ram_bytes=self.fixture.profile.ram_bytes,
            disk_free_bytes=self.fixture.profile.disk_free_bytes,
            tags=dict(self.spec.tags),
        )
        download = DownloadPolicy(deadline_s=60.0, read_timeout_s=30.0, max_retries=1, backoff_base_s=0.01)
        agent = Agent(
            self.data_dir,
            config,
            profile=profile,
            clock=self.fixture.clock,
            client=DeviceClient(self.fixture.server, transport=_Link(self.fixture.transport, self._link_up)),
            download=download,
            health=HealthPolicy(latency_runs=1),
            rng=self._jitter,
        )

        # The agent takes no downloads transport nor installer checkpoint; swap in an installer that downloads
        # through the shared pool and, on a device due a power cut, cuts it (same store, config, sink).
        def sink(event: Event) -> None:
            agent.outbox.add_event(event)

        # Downloads carry the device's credential, as the agent's own downloader's do.
        link = _Link(self.fixture.transport, self._link_up)
        self._downloads = HttpClient(transport=link, auth=agent.client.auth())
        cut = self.spec.power_cut if self._cut_pending else None
        agent.installer.close()
        agent.installer = Installer(
            self.data_dir,
            agent.installer.config,
            sink=sink,
            clock=self.fixture.clock,
            downloader=Downloader(download, client=self._downloads),
            checkpoint=None if cut is None else self._cut_at(cut),
        )
        agent.outbox.close()  # open again only while used (_outbox_open)
        return agent

    @contextlib.contextmanager
    def _outbox_open(self) -> Iterator[None]:
        """The agent's outbox, open while agent code or the application writes to it (three files fewer idle)."""
        self.agent.outbox = Outbox(self.agent.outbox.path)
        try:
            yield
        finally:
            self.agent.outbox.close()

    def _cut_at(self, point: CrashPoint) -> Callable[[CrashPoint], None]:
        def checkpoint(reached: CrashPoint) -> None:
            if reached == point and self._cut_pending:
                self._cut_pending = False
                raise PowerCut(point.value)

        return checkpoint

    def close(self) -> None:
        """Flush the Predictor into the outbox and release everything."""
        with self._outbox_open():
            self._unload(flush=True)
        self._shutdown()

    def _shutdown(self) -> None:
        self.agent.close()
        if self._downloads is not None:
            self._downloads.close()
            self._downloads = None

    # ------------------------------------------------------------ the application

    def joined(self, elapsed: float) -> bool:
        """Whether the device is online at ``elapsed`` seconds of fleet time."""
        return elapsed >= self.spec.joins_at

    def infer(self, rows: int, signal: SensorSignal, labelled: float) -> None:
        """Run one window's readings through the Predictor in one batch; count the true outcomes."""
        if self.predictor is None or self.version is None:
            return
        x, truth = sensor_readings(self.rng, rows, signal)
        known = np.where(self.rng.random(rows) < labelled, truth, -1)
        prediction = self.predictor.predict(x, label=known)
        tally = self.tally.setdefault(prediction.version or self.version, Tally())
        tally.n += rows
        tally.correct += int(np.sum(prediction.top1 == truth))
        tally.confidence += float(np.sum(prediction.confidence))

    def take_tally(self) -> dict[str, Tally]:
        """The true outcomes since the last call."""
        tally, self.tally = self.tally, {}
        return tally

    def signal(self, gain_loss: float) -> SensorSignal:
        """The sensor now, given the scenario's gain lost to aging so far."""
        return SensorSignal(
            gain=max(0.05, self.spec.gain * (1.0 - gain_loss * self.spec.aging)), temperature=self.spec.temperature
        )

    # ------------------------------------------------------------ the agent

    def _link_up(self) -> bool:
        return self._link_now

    def step(self, elapsed: float) -> StepResult | None:
        """One agent step at ``elapsed`` seconds of fleet time; a power cut reboots the device."""
        self._link_now = not any(start <= elapsed < end for start, end in self.spec.outages)
        if self._link_now and self.fixture.drop > 0:
            self._link_now = self._jitter.random() >= self.fixture.drop
        try:
            with self._outbox_open():
                result = self.agent.step()
                if not result.ok:
                    self.failed_steps += 1
                self.summaries_sent += result.sent_summaries
                self._follow_install()
        except PowerCut:
            self.power_cuts += 1
            log.info("power cut on %s during an install", self.spec.device_id)
            self._unload(flush=False)  # the application dies with the power: its open window is lost
            self._shutdown()
            self.agent = self._boot()
            return None
        return result

    def _follow_install(self) -> None:
        """Load a Predictor on what the agent serves (current, and an experiment's candidate) when that changed."""
        serving = self.agent.serving(self.fixture.model)
        if serving == self.serving:
            return
        self._unload(flush=True)
        if serving is None:
            return
        served = open_served(self.agent, self.fixture.model, config=self.fixture.runtime, clock=self.fixture.clock)
        if served is None:
            return
        self._served, self.predictor, self.serving = served, served.predictor, served.serving
        self.slot, self.version = served.serving.active, served.predictor.versions[0]

    def _unload(self, *, flush: bool) -> None:
        predictor, self.predictor = self.predictor, None
        self.agent.predictor = None
        if predictor is not None and flush:
            now: datetime = self.fixture.clock.now()
            for summary in predictor.flush(now, final=True):
                self.agent.outbox.add_summary(summary)
            for event in predictor.drain_events():
                self.agent.outbox.add_event(event)
        if self._served is not None:
            self._served.close()  # the Predictor and the versions it held open
            self._served = None
        self.slot = self.version = self.serving = None
