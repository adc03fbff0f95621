"""Check-in and telemetry throughput of the fleet server, against a bare endpoint of the same stack.

DESIGN §13 and ADR 0003. For each database (SQLite, PostgreSQL) this:

1. initialises a data directory (``modelfleet.server.init_server``), starts
   ``modelfleet server run --workers 2`` (uvicorn, uvloop, httptools), pushes two
   real signed bundles over the admin API and pins them: ``ring=stable`` devices
   to 1.0.0, ``ring=canary`` to 1.1.0, and 1 % of the devices by device pin;
2. enrolls the fleet: a few devices through the real enroll route (key pair,
   proof, enrollment token), the rest written as rows by the store's own
   secret and hash functions (real ``mfd_`` credentials, only their sha256
   stored), because 100,000 HTTP enrolls would take longer than the benchmark;
3. has every device check in once (so the server stores its report and the
   device learns its ETag, as in production);
4. measures the throughput ceiling with wrk (``wrk/checkin.lua``): every request
   is a different device's check-in with its credential and ETag, so almost
   every answer is 304;
5. measures a realistic mix with an asyncio httpx client: check-ins (mostly
   304), telemetry batches of real ``modelfleet.telemetry.Summary`` objects and
   event batches, each at a fixed offered rate.

The baseline runs in the same process: ``bare_app.py``, one FastAPI ``async def``
route doing one indexed stdlib-sqlite3 read, served with the same uvicorn
settings and measured by the same wrk command with the same credentials.

Results go to ``bench/results/checkin.json``. ``--quick`` (a few thousand
devices, 5 s per run) only proves the harness works.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import create_engine, insert, make_url, text

from modelfleet.bundle import BuildOptions, DeviceProfile, Manifest, SigningKey, build_bundle, load_validation_set
from modelfleet.cli._client import AdminClient
from modelfleet.protocol import CheckinRequest, EnrollRequest, EventBatch, InstalledModel, TelemetryBatch
from modelfleet.protocol import enrollment_message as enrollment_bytes
from modelfleet.sim.models import digits_mlp
from modelfleet.telemetry import LATENCY_EDGES_MS, Event, Summary

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "wrk" / "checkin.lua"
DEFAULT_OUT = BENCH / "results" / "checkin.json"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
WRK_INSTALL = "apt-get install -y wrk"
MODEL = "digits"
VERSIONS = (("1.0.0", 1), ("1.1.0", 2))
HTTP_ENROLLED = 5
STREAMS = ("checkin", "telemetry", "events")
T = TypeVar("T")
GOALS = {
    "sqlite": {"checkins_per_s": 4000, "p99_ms": 50, "errors": 0},
    "postgresql": {"checkins_per_s": 3000, "p99_ms": 50, "errors": 0},
    "summaries_per_s": 2000,
}
PROFILE = DeviceProfile(
    arch="aarch64",
    device_type="rpi4",
    runtimes={"onnxruntime": "1.19.0", "python": "3.11.7"},
    ram_bytes=4 * 1024**3,
    disk_free_bytes=12 * 1024**3,
    tags={"site": "plant-7"},
)


@dataclass
class Options:
    """What one benchmark run does."""

    devices: int
    duration: int
    connections: int
    wrk_threads: int
    workers: int
    backends: tuple[str, ...]
    pg_url: str
    out: Path
    quick: bool
    mix_devices: int
    mix_checkins_per_s: float
    mix_summaries_per_s: float
    mix_batch: int
    mix_events_per_s: float
    mix_connections: int


@dataclass
class FleetDevice:
    """One enrolled device as the load generators play it."""

    id: str
    credential: str
    group: int
    etag: str = ""


@dataclass
class Fleet:
    """The enrolled devices and the check-in body of each desired-state group."""

    devices: list[FleetDevice]
    bodies: list[str]
    group_versions: list[tuple[str, int]]
    manifest: Manifest
    answers: dict[int, str] = field(default_factory=dict)
    answer_ids: dict[int, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 60.0) -> None:
    """Poll ``url`` until the server answers (any status), or fail with its log."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            msg = f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            raise RuntimeError(msg)
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1.0, trust_env=False)
            return
        time.sleep(0.1)
    msg = f"server not ready after {deadline_s} s:\n{log.read_text(errors='replace')[-4000:]}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def serving(cmd: Sequence[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in its own process group; stop exactly that group afterwards."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(ready_url, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have been waited for (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def database_pids() -> list[int]:
    """The PostgreSQL server's processes (their CPU is the database's share of the work)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each process so far."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run the client side on uvloop: it needs the CPU less than asyncio's loop, and it shares the cores."""
    return uvloop.run(coroutine)


# --------------------------------------------------------------------------- fleet set-up


def build_bundles(work: Path, key_path: Path) -> tuple[list[Path], Manifest]:
    """Two real signed versions of a trained digits classifier, signed with the server's trusted key."""
    case = digits_mlp(work / "digits.onnx", seed=7)
    np.savez(work / "val.npz", x=case.x_val, y=case.y_val)
    validation = load_validation_set(work / "val.npz")
    key = SigningKey.from_file(key_path)
    paths = []
    manifest: Manifest | None = None
    for version, release in VERSIONS:
        out = work / f"{MODEL}-{version}.mfb"
        options = BuildOptions(name=MODEL, version=version, release=release, labels=case.labels)
        manifest = build_bundle(case.path, validation, [key], out, options)
        paths.append(out)
    if manifest is None:
        raise RuntimeError("no bundle versions to build")
    return paths, manifest


def fresh_pg_database(server_url: str) -> str:
    """Create an empty database for this run on the PostgreSQL server of ``server_url``."""
    url = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"modelfleet_bench_{os.getpid()}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(database_url: str) -> None:
    """Drop the run's database."""
    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


def group_of(index: int, n: int) -> int:
    """0: ring=stable (1.0.0), 1: ring=canary (1.1.0), 2: ring=stable but device-pinned to 1.1.0."""
    if index < max(1, n // 100):
        return 2
    return 1 if index % 10 == 0 else 0


GROUP_TAGS = ({"ring": "stable"}, {"ring": "canary"}, {"ring": "stable"})
GROUP_VERSIONS = (VERSIONS[0], VERSIONS[1], VERSIONS[1])


def checkin_body(group: int) -> str:
    """The report a device of ``group`` makes: it runs what it was told to."""
    version, release = GROUP_VERSIONS[group]
    installed = InstalledModel(model=MODEL, version=version, release=release, state="committed")
    return CheckinRequest(inventory=PROFILE, installed=(installed,)).model_dump_json()


def enroll_over_http(base: str, admin: AdminClient, count: int) -> list[FleetDevice]:
    """Enroll ``count`` devices the way agents do: own key pair, proof, enrollment token."""
    issued = admin.post("/enrollment-tokens", {"max_uses": count, "tags": GROUP_TAGS[0]})
    devices = []
    with httpx.Client(base_url=base, trust_env=False, timeout=30) as http:
        for index in range(count):
            key = Ed25519PrivateKey.generate()
            public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
            unsigned = EnrollRequest(
                device_id=f"http-{index:04d}",
                public_key=public,
                issued_at=datetime.now(UTC),
                enroll_token=issued["token"],
                inventory=PROFILE,
                proof="-",
            )
            proof = base64.b64encode(key.sign(enrollment_bytes(unsigned))).decode()
            request = unsigned.model_copy(update={"proof": proof})
            answer = http.post("/v1/devices/enroll", content=request.model_dump_json(), headers=_JSON_HEADERS)
            answer.raise_for_status()
            devices.append(FleetDevice(request.device_id, answer.json()["credential"], 0))
    return devices


def enroll_in_bulk(database_url: str, n: int) -> tuple[list[FleetDevice], float]:
    """Write ``n`` accepted devices as rows, as enrollment and a first check-in leave them.

    Credentials are made and hashed by the store's own functions (only the
    sha256 is stored); the stored report (inventory, installed, report hash) is
    the one each device's check-in body makes, hashed by the server's own
    function, so a check-in of an unchanged device writes nothing, as in
    production.
    """
    from modelfleet.server._checkin import report_hash  # noqa: PLC0415 - the hash check-ins compare against
    from modelfleet.store import Device, make_engine  # noqa: PLC0415 - server extra
    from modelfleet.store._tokens import new_secret, secret_hash  # noqa: PLC0415 - the same functions enroll uses

    started = time.perf_counter()
    reports = [CheckinRequest.model_validate_json(checkin_body(g)).model_dump(mode="json") for g in range(3)]
    hashes = [report_hash(report) for report in reports]
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    devices: list[FleetDevice] = []
    rows: list[dict[str, Any]] = []
    table = Device.__table__
    with engine.begin() as conn:
        for index in range(n):
            credential = new_secret("mfd_")
            group = group_of(index, n)
            device = FleetDevice(f"dev-{index:07d}", credential, group)
            devices.append(device)
            rows.append(
                {
                    "id": device.id,
                    "public_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                    "status": "accepted",
                    "credential_hash": secret_hash(credential),
                    "tags": dict(GROUP_TAGS[group]),
                    "inventory": reports[group]["inventory"],
                    "installed": reports[group]["installed"],
                    "report_hash": hashes[group],
                    "last_issued_at": now,
                    "created_at": now,
                    "approved_at": now,
                }
            )
            if len(rows) == 5000:
                conn.execute(insert(table), rows)
                rows.clear()
        if rows:
            conn.execute(insert(table), rows)
    engine.dispose()
    return devices, time.perf_counter() - started


_JSON_HEADERS = {"Content-Type": "application/json"}


async def _checkins(base: str, fleet: Fleet, devices: list[FleetDevice], *, with_etag: bool) -> list[httpx.Response]:
    """Real check-ins of ``devices`` (48 at a time), in order."""
    limits = httpx.Limits(max_connections=48, max_keepalive_connections=48)
    gate = asyncio.Semaphore(48)
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False, timeout=60) as client:

        async def one(device: FleetDevice) -> httpx.Response:
            headers = {**_JSON_HEADERS, "Authorization": f"Bearer {device.credential}"}
            if with_etag:
                headers["If-None-Match"] = device.etag
            async with gate:
                return await client.post("/v1/devices/checkin", content=fleet.bodies[device.group], headers=headers)

        return list(await asyncio.gather(*(one(device) for device in devices)))


def _etag(answer: str) -> str:
    return '"' + hashlib.sha256(answer.encode("utf-8")).hexdigest() + '"'


def learn_etags(base: str, fleet: Fleet, checked_in: list[FleetDevice], sample: int = 300) -> dict[str, int]:
    """Give every device the ETag of its desired state, as its last check-in would have.

    ``checked_in`` devices (the HTTP-enrolled ones and one per group) really
    check in. For the others the answer differs only in ``device_id``, so the
    ETag is derived from their group's real answer (the server's ETag is the
    sha256 of the answer body; checked here) and then confirmed by ``sample``
    real check-ins that must all be 304. wrk's status counts confirm the rest.
    """
    for device, answer in zip(checked_in, run_async(_checkins(base, fleet, checked_in, with_etag=False)), strict=True):
        if answer.status_code != 200:
            msg = f"check-in of {device.id} answered {answer.status_code}: {answer.text[:300]}"
            raise RuntimeError(msg)
        device.etag = answer.headers["etag"]
        if device.etag != _etag(answer.text):
            msg = f"the server's ETag is not the sha256 of its answer ({device.etag}); cannot derive ETags"
            raise RuntimeError(msg)
        fleet.answers.setdefault(device.group, answer.text)
        fleet.answer_ids.setdefault(device.group, device.id)
    for device in fleet.devices:
        if not device.etag:
            template = fleet.answers[device.group]
            own = template.replace(f'"device_id":"{fleet.answer_ids[device.group]}"', f'"device_id":"{device.id}"', 1)
            device.etag = _etag(own)
    picked = random.Random(5).sample(fleet.devices, min(sample, len(fleet.devices)))  # noqa: S311 - not a secret
    statuses: dict[str, int] = {}
    for answer in run_async(_checkins(base, fleet, picked, with_etag=True)):
        statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
    if statuses != {"304": len(picked)}:
        msg = f"derived ETags do not hold: {len(picked)} sampled check-ins answered {statuses}"
        raise RuntimeError(msg)
    return statuses


def write_devices_file(path: Path, fleet: Fleet) -> None:
    """The file wrk/checkin.lua reads: bodies, then one device per line."""
    with path.open("w") as out:
        out.write(f"{len(fleet.bodies)} {len(fleet.devices)}\n")
        for body in fleet.bodies:
            out.write(body + "\n")
        for device in fleet.devices:
            out.write(f"{device.credential}\t{device.etag}\t{device.group}\n")


# --------------------------------------------------------------------------- wrk


def run_wrk(url: str, devices_file: Path, options: Options, server_pid: int | None) -> dict[str, Any]:
    """The throughput ceiling: wrk with the check-in script; worker CPU split measured around it."""
    wrk = shutil.which("wrk") or "wrk"
    cmd = [
        wrk,
        f"-t{options.wrk_threads}",
        f"-c{options.connections}",
        f"-d{options.duration}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url,
        "--",
        str(devices_file),
    ]
    workers, database = (_children(server_pid) if server_pid else []), database_pids()
    before, db, busy, load = cpu_seconds(workers), cpu_seconds(database), machine_busy_seconds(), children_cpu_seconds()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=options.duration + 300)
    after, db_after = cpu_seconds(workers), cpu_seconds(database)
    busy, load = machine_busy_seconds() - busy, children_cpu_seconds() - load
    line = next((x for x in done.stdout.splitlines() if x.startswith("MODELFLEET_WRK ")), None)
    if done.returncode != 0 or line is None:
        msg = f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        raise RuntimeError(msg)
    raw = json.loads(line.removeprefix("MODELFLEET_WRK "))
    seconds = raw["duration_us"] / 1e6
    socket_errors = sum(raw["errors"][k] for k in ("connect", "read", "write", "timeout"))
    bad_status = raw["status"]["4xx"] + raw["status"]["5xx"] + raw["status"]["other"]
    return {
        "command": " ".join([Path(cmd[0]).name, *cmd[1:]]),
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "status": raw["status"],
        "share_304": round(raw["status"]["304"] / max(raw["requests"], 1), 4),
        "latency_ms": {k: round(v / 1000, 3) for k, v in raw["latency_us"].items()},
        "errors": socket_errors + bad_status,
        "error_detail": {**raw["errors"], "bad_status": bad_status},
        "cpu_s": _cpu_split(before, after, busy, load, _spent(db, db_after)),
    }


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after.get(pid, seconds) - seconds for pid, seconds in before.items())


def _cpu_split(
    before: dict[int, float], after: dict[int, float], busy: float, load: float, database: float
) -> dict[str, Any]:
    """Where the machine's CPU went during a run: server workers, PostgreSQL, the load generator, the rest.

    The machine may be shared; ``other_processes`` says how much of it something else took.
    """
    workers = [round(after.get(pid, 0.0) - before.get(pid, 0.0), 2) for pid in before]
    return {
        "workers": workers,
        "postgresql": round(database, 2),
        "load_generator": round(load, 2),
        "machine_busy": round(busy, 2),
        "other_processes": round(max(busy - sum(workers) - load - database, 0.0), 2),
    }


# --------------------------------------------------------------------------- the realistic mix


def _histogram_probabilities(counts: Sequence[int]) -> np.ndarray:
    weights = np.asarray(counts, dtype=np.float64) + 0.5
    return weights / weights.sum()


class SummaryFactory:
    """Real telemetry summaries shaped by the bundle's own reference histograms."""

    def __init__(self, manifest: Manifest, seed: int = 3) -> None:
        self.rng = np.random.default_rng(seed)
        refs = manifest.evidence.references
        bins = max(len(f.counts) for f in refs.features)
        self.features = np.stack(
            [np.pad(_histogram_probabilities(f.counts), (0, bins - len(f.counts))) for f in refs.features]
        )
        self.confidence = _histogram_probabilities(refs.confidence.counts)
        self.classes = len(manifest.contract.labels or ()) or 10
        latency = np.exp(-0.5 * ((np.arange(len(LATENCY_EDGES_MS) - 1) - 24) / 2.0) ** 2)
        self.latency = latency / latency.sum()
        self.window_start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)

    def summary(self, version: str) -> Summary:
        """One 5-minute window of 2,000 inferences."""
        n = 2000
        feature_counts = self.rng.multinomial(n, self.features)
        confidence = self.rng.multinomial(n, self.confidence)
        return Summary(
            id=secrets.token_hex(12),
            model=MODEL,
            version=version,
            window_start=self.window_start,
            window_seconds=300,
            n=n,
            errors=int(self.rng.integers(0, 3)),
            latency_counts=tuple(int(c) for c in self.rng.multinomial(n, self.latency)),
            latency_sum_ms=float(n) * 1.8,
            confidence_counts=tuple(int(c) for c in confidence),
            confidence_sum=float(n) * 0.9,
            confidence_sum_sq=float(n) * 0.82,
            predicted_counts=tuple(int(c) for c in self.rng.multinomial(n, np.full(self.classes, 1 / self.classes))),
            feature_counts=tuple(tuple(int(c) for c in row) for row in feature_counts),
        )


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    ordered = np.sort(np.asarray(samples))
    return {
        "p50": round(float(np.percentile(ordered, 50)) * 1000, 3),
        "p99": round(float(np.percentile(ordered, 99)) * 1000, 3),
        "max": round(float(ordered[-1]) * 1000, 3),
    }


@dataclass
class Stream:
    """One kind of request offered at a fixed rate."""

    name: str
    rate: float
    bodies: list[tuple[FleetDevice, str]]
    path: str
    items_per_request: int = 1
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    skipped: int = 0


class Connections:
    """The mix's connections, one httpx client each, lent to one request at a time.

    One client with a 64-connection pool spends most of its CPU in httpcore's
    pool bookkeeping (``_assign_requests_to_connections``) once requests wait;
    one-connection clients keep the load generator's own cost per request flat.
    """

    def __init__(self, base: str, count: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.all = [httpx.AsyncClient(base_url=base, limits=limits, trust_env=False, timeout=30) for _ in range(count)]
        # First in, first out: every connection keeps being used, so none sits idle past the server's
        # keep-alive timeout (5 s) and races its close with a new request.
        self.idle = collections.deque(self.all)

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.all:
            await client.aclose()


async def _offer(connections: Connections, stream: Stream, seconds: float) -> None:
    """Send ``stream.rate`` requests a second on a fixed schedule; never queue behind the server."""
    start = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, device: FleetDevice, body: str, etag: bool) -> None:
        headers = {**_JSON_HEADERS, "Authorization": f"Bearer {device.credential}"}
        if etag and device.etag:
            headers["If-None-Match"] = device.etag
        began = time.perf_counter()
        try:
            answer = await client.post(stream.path, content=body, headers=headers)
        except httpx.HTTPError as failure:
            stream.failures[type(failure).__name__] = stream.failures.get(type(failure).__name__, 0) + 1
        else:
            stream.latencies.append(time.perf_counter() - began)
            stream.statuses[answer.status_code] = stream.statuses.get(answer.status_code, 0) + 1
        finally:
            connections.idle.append(client)

    total = int(stream.rate * seconds)
    for index in range(total):
        delay = start + index / stream.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not connections.idle:
            stream.skipped += 1  # every connection busy: the offered rate exceeds what the server takes
            continue
        device, body = stream.bodies[index % len(stream.bodies)]
        # 2 % of check-ins come from devices that lost their ETag (restart): a full 200 answer.
        task = asyncio.create_task(one(connections.idle.popleft(), device, body, etag=index % 50 != 0))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def build_mix(fleet: Fleet, options: Options) -> list[Stream]:
    """Pre-build every body (outside the timed window): check-ins, telemetry and event batches."""
    devices = fleet.devices[: options.mix_devices]
    factory = SummaryFactory(fleet.manifest)
    seconds = options.duration
    batches = max(1, int(options.mix_summaries_per_s * seconds / options.mix_batch) + 1)
    telemetry = []
    for index in range(batches):
        device = devices[index % len(devices)]
        version = GROUP_VERSIONS[device.group][0]
        batch = TelemetryBatch(summaries=tuple(factory.summary(version) for _ in range(options.mix_batch)))
        telemetry.append((device, batch.model_dump_json()))
    event_batch = 10
    events = []
    for index in range(max(1, int(options.mix_events_per_s * seconds / event_batch) + 1)):
        device = devices[index % len(devices)]
        version = GROUP_VERSIONS[device.group][0]
        items = tuple(
            Event(id=secrets.token_hex(12), kind="health_passed", at=datetime.now(UTC), model=MODEL, version=version)
            for _ in range(event_batch)
        )
        events.append((device, EventBatch(events=items).model_dump_json()))
    checkins = [(device, fleet.bodies[device.group]) for device in devices]
    return [
        Stream("checkin", options.mix_checkins_per_s, checkins, "/v1/devices/checkin"),
        Stream(
            "telemetry", options.mix_summaries_per_s / options.mix_batch, telemetry, "/v1/telemetry", options.mix_batch
        ),
        Stream("events", options.mix_events_per_s / event_batch, events, "/v1/events", event_batch),
    ]


async def run_mix(base: str, streams: list[Stream], options: Options, server_pid: int | None) -> dict[str, Any]:
    """Offer every stream at once for ``duration`` seconds; report what was served."""
    connections = Connections(base, options.mix_connections)
    workers, database = (_children(server_pid) if server_pid else []), database_pids()
    before, db, busy, own = cpu_seconds(workers), cpu_seconds(database), machine_busy_seconds(), time.process_time()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(_offer(connections, stream, options.duration) for stream in streams))
    finally:
        elapsed = time.perf_counter() - started
        await connections.aclose()
    after, db_after = cpu_seconds(workers), cpu_seconds(database)
    busy, own = machine_busy_seconds() - busy, time.process_time() - own
    report: dict[str, Any] = {
        "seconds": round(elapsed, 3),
        "connections": options.mix_connections,
        "cpu_s": _cpu_split(before, after, busy, own, _spent(db, db_after)),
    }
    for stream in streams:
        ok = sum(count for status, count in stream.statuses.items() if status in {200, 304})
        errors = sum(stream.failures.values())
        errors += sum(count for status, count in stream.statuses.items() if status not in {200, 304})
        report[stream.name] = {
            "offered_per_s": round(stream.rate * stream.items_per_request, 1),
            "served_per_s": round(ok * stream.items_per_request / elapsed, 1),
            "requests": ok + errors,
            "items_per_request": stream.items_per_request,
            "status": {str(k): v for k, v in sorted(stream.statuses.items())},
            "latency_ms": _percentiles(stream.latencies),
            "errors": errors,
            "transport_failures": stream.failures,
            "not_sent_client_saturated": stream.skipped,
        }
    return report


# --------------------------------------------------------------------------- one server, one database


def bench_ours(backend: str, work: Path, options: Options) -> tuple[dict[str, Any], Fleet]:
    """Set up, load and measure our server on one database."""
    from modelfleet.server import init_server  # noqa: PLC0415 - server extra

    data = work / f"data-{backend}"
    database_url = fresh_pg_database(options.pg_url) if backend == "postgresql" else None
    try:
        initialised = init_server(data, database_url=database_url)
        database_url = database_url or initialised.database
        bundles, manifest = build_bundles(work, Path(initialised.signing_key))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "modelfleet", "server", "run", "--data", str(data), "--port", str(port)]
        cmd += ["--workers", str(options.workers)]
        if backend == "postgresql":
            cmd += ["--db", database_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
        log = work / f"server-{backend}.log"
        with serving(cmd, env, f"{base}/healthz", log) as proc:
            target = Target(base, database_url, initialised.admin_token, proc.pid)
            result, fleet = _load_and_measure(target, bundles, manifest, options)
        if result["wrk"]["errors"] or any(result["mix"][name]["errors"] for name in STREAMS):
            result["server_log_tail"] = log.read_text(errors="replace").splitlines()[-40:]
    finally:
        if backend == "postgresql" and database_url:
            drop_pg_database(database_url)
    result["database"] = backend
    return result, fleet


@dataclass(frozen=True)
class Target:
    """A running server of ours: where, on which database, as which admin, which process."""

    base: str
    database_url: str
    admin_token: str
    pid: int


def _load_and_measure(
    target: Target, bundles: list[Path], manifest: Manifest, options: Options
) -> tuple[dict[str, Any], Fleet]:
    base, database_url = target.base, target.database_url
    setup: dict[str, float] = {}
    with AdminClient(base, target.admin_token, timeout=120) as admin:
        for bundle in bundles:
            admin.upload_bundle(bundle, lambda _sent, _total: None)
        http_devices = enroll_over_http(base, admin, HTTP_ENROLLED)
        bulk, setup["bulk_enroll_s"] = enroll_in_bulk(database_url, options.devices - HTTP_ENROLLED)
        fleet = Fleet(
            devices=http_devices + bulk,
            bodies=[checkin_body(group) for group in range(len(GROUP_TAGS))],
            group_versions=list(GROUP_VERSIONS),
            manifest=manifest,
        )
        started = time.perf_counter()
        admin.post("/pins", {"model": MODEL, "version": VERSIONS[0][0], "selector": GROUP_TAGS[0]})
        admin.post("/pins", {"model": MODEL, "version": VERSIONS[1][0], "selector": GROUP_TAGS[1]})
        for device in fleet.devices:
            if device.group == 2:
                admin.post("/pins", {"model": MODEL, "version": VERSIONS[1][0], "device_id": device.id})
        setup["pins_s"] = time.perf_counter() - started
        setup["device_pins"] = sum(1 for d in fleet.devices if d.group == 2)
    started = time.perf_counter()
    first = {group: next(d for d in bulk if d.group == group) for group in range(len(GROUP_TAGS))}
    setup["sampled_304"] = learn_etags(base, fleet, http_devices + list(first.values()))["304"]
    setup["etags_s"] = time.perf_counter() - started
    devices_file = Path(tempfile.mkstemp(prefix="devices-", suffix=".tsv")[1])
    try:
        write_devices_file(devices_file, fleet)
        wrk_result = run_wrk(f"{base}/v1/devices/checkin", devices_file, options, target.pid)
    finally:
        devices_file.unlink()
    streams = build_mix(fleet, options)
    mix = run_async(run_mix(base, streams, options, target.pid))
    result = {
        "setup": {k: round(v, 2) for k, v in setup.items()},
        "wrk": wrk_result,
        "mix": mix,
    }
    return result, fleet


def bench_bare(work: Path, fleet: Fleet, options: Options) -> dict[str, Any]:
    """The same wrk command against the bare endpoint holding the same credentials and ETags."""
    sys.path.insert(0, str(BENCH))
    from bare_app import create_database  # noqa: PLC0415 - lives beside this script
    from modelfleet.store._tokens import secret_hash  # noqa: PLC0415

    database = work / "bare.db"
    rows = [(secret_hash(d.credential), d.etag, fleet.answers.get(d.group, "{}")) for d in fleet.devices]
    create_database(database, rows)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(BENCH), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--workers", str(options.workers), "--loop", "uvloop", "--http", "httptools"]
    cmd += ["--no-access-log", "--no-server-header", "--log-level", "warning"]
    env = {**os.environ, "BARE_CHECKIN_DB": str(database)}
    devices_file = work / "bare-devices.tsv"
    write_devices_file(devices_file, fleet)
    with serving(cmd, env, f"http://127.0.0.1:{port}/", work / "bare.log") as proc:
        return {"wrk": run_wrk(f"http://127.0.0.1:{port}/v1/devices/checkin", devices_file, options, proc.pid)}


# --------------------------------------------------------------------------- report


def summarise(results: dict[str, Any]) -> list[str]:
    """Human-readable lines: per database, check-ins/s, latency, errors, ratio to bare, mix."""
    bare = results["bare"]["wrk"]
    lines = [
        (
            f"bare FastAPI + sqlite3 (wrk): {bare['requests_per_s']:,.0f} req/s, p50 {bare['latency_ms']['p50']} ms, "
            f"p99 {bare['latency_ms']['p99']} ms, errors {bare['errors']}, CPU s {bare['cpu_s']}"
        )
    ]
    for backend, run in results["backends"].items():
        w = run["wrk"]
        mix = run["mix"]
        lines.append(
            f"{backend} (wrk): {w['requests_per_s']:,.0f} check-ins/s ({w['share_304']:.1%} 304), "
            f"p50 {w['latency_ms']['p50']} ms, p99 {w['latency_ms']['p99']} ms, errors {w['errors']}, "
            f"ours/bare {run['ratio_to_bare']:.3f}, CPU s {w['cpu_s']}"
        )
        for name in STREAMS:
            s = mix[name]
            unit = {"checkin": "check-ins/s", "telemetry": "summaries/s", "events": "events/s"}[name]
            lines.append(
                f"  mix {name}: {s['served_per_s']:,.1f} {unit} served of {s['offered_per_s']:,.0f} offered, "
                f"p50 {s['latency_ms']['p50']} ms, p99 {s['latency_ms']['p99']} ms, errors {s['errors']}, "
                f"not sent (client saturated) {s['not_sent_client_saturated']}"
            )
        goal = GOALS[backend]
        met = w["requests_per_s"] >= goal["checkins_per_s"] and w["latency_ms"]["p99"] < goal["p99_ms"]
        met = met and w["errors"] == 0
        summaries_met = mix["telemetry"]["served_per_s"] >= GOALS["summaries_per_s"]
        verdict = "met" if met else "NOT met"
        lines.append(
            f"  goal >= {goal['checkins_per_s']:,}/s, p99 < {goal['p99_ms']} ms, 0 errors: {verdict}; "
            f"summaries >= {GOALS['summaries_per_s']:,}/s: {'met' if summaries_met else 'NOT met'}"
        )
    return lines


def measured_code() -> dict[str, Any]:
    """Which code this run measured: the git commit, how many files differ from it, a digest of ``src/``."""
    root = BENCH.parent
    digest = hashlib.sha256()
    for path in sorted((root / "src").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    git = shutil.which("git") or "git"
    head = subprocess.run([git, "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    status = subprocess.run([git, "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=False)
    return {
        "git_head": head.stdout.strip() or None,
        "uncommitted_files": len(status.stdout.splitlines()) if status.returncode == 0 else None,
        "src_sha256": digest.hexdigest(),
    }


def parse_options(argv: Sequence[str] | None) -> Options:
    """Command-line options; ``--quick`` shrinks the fleet and the runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3,000 devices, 5 s per run: proves the harness")
    parser.add_argument("--devices", type=int, help="enrolled devices (default 100,000; quick 3,000)")
    parser.add_argument("--duration", type=int, help="seconds per measured run (default 30; quick 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (it shares the 2 cores)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes, ours and bare")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="a PostgreSQL server; the run creates its own database")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--mix-devices", type=int, default=2000, help="devices the mix client plays")
    parser.add_argument("--mix-checkins-per-s", type=float, default=400.0, help="100,000 devices polling every 4 min")
    parser.add_argument("--mix-summaries-per-s", type=float, default=2500.0)
    parser.add_argument("--mix-batch", type=int, default=25, help="summaries per telemetry request")
    parser.add_argument("--mix-events-per-s", type=float, default=100.0)
    parser.add_argument("--mix-connections", type=int, default=64)
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown or not backends:
        parser.error(f"--backends takes sqlite and/or postgresql, got {args.backends!r}")
    devices = args.devices or (3000 if args.quick else 100_000)
    return Options(
        devices=max(devices, HTTP_ENROLLED + 100),
        duration=args.duration or (5 if args.quick else 30),
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        workers=args.workers,
        backends=backends,
        pg_url=args.pg_url,
        out=args.out,
        quick=args.quick,
        mix_devices=min(args.mix_devices, devices),
        mix_checkins_per_s=args.mix_checkins_per_s,
        mix_summaries_per_s=args.mix_summaries_per_s,
        mix_batch=args.mix_batch,
        mix_events_per_s=args.mix_events_per_s,
        mix_connections=args.mix_connections,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 2 when wrk is missing."""
    options = parse_options(argv)
    if shutil.which("wrk") is None:
        print(f"wrk is not installed; install it with:\n  {WRK_INSTALL}\n(or run `make bench`)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "benchmark": "checkin",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items() if k not in {"pg_url", "out"}
        },
        "goals": GOALS,
        "code": measured_code(),
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="modelfleet-bench-") as tmp:
        work = Path(tmp)
        fleet: Fleet | None = None
        for backend in options.backends:
            print(f"[{backend}] setting up {options.devices:,} devices ...", file=sys.stderr, flush=True)
            results["backends"][backend], fleet = bench_ours(backend, work, options)
        if fleet is None:
            raise RuntimeError("no backend ran")
        print("[bare] baseline ...", file=sys.stderr, flush=True)
        results["bare"] = bench_bare(work, fleet, options)
    bare_rate = results["bare"]["wrk"]["requests_per_s"]
    for run in results["backends"].values():
        run["ratio_to_bare"] = round(run["wrk"]["requests_per_s"] / bare_rate, 4) if bare_rate else None
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for line in summarise(results):
        print(line)
    print(f"results written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
