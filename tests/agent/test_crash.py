"""Power cuts at every step: SIGKILLed installs, commits and rollbacks must leave a working device.

A zygote process imports the agent once and forks one child per run, so a run costs
a fork instead of an interpreter start (hundreds of kills fit in a minute). A child
resumes, then installs what the "server" assigns, exactly as an agent does after a
restart. Each run is killed either by the agent's own crash hook
(``MODELFLEET_CRASH_AT=<step>``, read through ``modelfleet.config``) or by this test
after a random delay. After every kill:

- ``current`` resolves to a complete version, old or new, whose files re-verify
  against its signed manifest (never a mix), and ``previous`` is not dangling;
- a restarted agent converges to the outcome of an uninterrupted run and leaves no
  temporary file behind.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelfleet.agent import CrashPoint, Installer, SlotStore, UpdateState

MODEL = "digits"
RANDOM_KILLS = 200
WORKERS = 4

ZYGOTE = r"""
import json, os, select, sys, traceback
from pathlib import Path

import modelfleet.agent as agent  # onnxruntime, httpx, numpy: imported once, before any fork
from modelfleet.bundle import DeviceProfile, PublicKey, TrustedKeys
from modelfleet.config import load_settings
from modelfleet.protocol import DesiredModel


def run(job):
    if job["crash_at"]:
        os.environ["MODELFLEET_CRASH_AT"] = job["crash_at"]
    config = agent.InstallConfig(
        trusted=TrustedKeys.of([PublicKey(bytes.fromhex(job["key"]))]),
        device=DeviceProfile.model_validate_json(job["device"]),
        keep_versions=2,
        health=agent.HealthPolicy(latency_runs=2),
        download=agent.DownloadPolicy(head_bytes=2048, read_timeout_s=10, deadline_s=60),
    )

    def sink(event):
        with open(job["events"], "a") as out:
            out.write(event.model_dump_json() + "\n")

    with agent.Installer(Path(job["root"]), config, sink=sink, settings=load_settings()) as installer:
        installer.resume()
        installer.assign(DesiredModel.model_validate_json(job["desired"]))


def child(job):
    code = 0
    try:
        run(job)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)


def serve():
    running, pending = {}, b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.002)
        if ready:
            data = os.read(0, 65536)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                job = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    child(job)
                running[pid] = job["id"]
                print("started", job["id"], pid, flush=True)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            print("exited", running.pop(pid), os.waitstatus_to_exitcode(status), flush=True)


serve()
"""


class Zygote:
    """A pre-imported agent process that forks a child per job and reports pids and exit codes."""

    def __init__(self, script: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MODELFLEET_CRASH_AT"}
        self._process = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self._started: dict[str, Future[int]] = collections.defaultdict(Future)
        self._exited: dict[str, Future[int]] = collections.defaultdict(Future)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            what, job, number = raw.decode().split()
            with self._lock:
                table = self._started if what == "started" else self._exited
                table[job].set_result(int(number))

    def start(self, job: dict[str, object]) -> tuple[str, int]:
        """Fork a child for ``job``; return its job id and pid."""
        job_id = f"job{next(self._ids)}"
        with self._lock:
            started = self._started[job_id]
            assert self._process.stdin is not None
            self._process.stdin.write((json.dumps({**job, "id": job_id}) + "\n").encode())
            self._process.stdin.flush()
        return job_id, started.result(timeout=30)

    def wait(self, job_id: str) -> int:
        """The child's exit code (``-9`` when SIGKILLed)."""
        with self._lock:
            exited = self._exited[job_id]
        return exited.result(timeout=60)

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(10)


@dataclass(frozen=True)
class Scenario:
    """An install to interrupt: the store it starts from, what is assigned, how it must end."""

    name: str
    template: Path
    desired: str
    old: str
    new: str
    final_state: UpdateState
    final_current: str


@dataclass
class Tally:
    """What the kills hit."""

    landed: int = 0
    missed: int = 0
    by_state: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, code: int, state: str) -> None:
        with self.lock:
            if code == -signal.SIGKILL:
                self.landed += 1
                self.by_state[state] += 1
            else:
                self.missed += 1


@pytest.fixture(scope="module")
def zygote(tmp_path_factory) -> Iterator[Zygote]:
    script = tmp_path_factory.mktemp("zygote") / "zygote.py"
    script.write_text(ZYGOTE)
    process = Zygote(script)
    yield process
    process.close()


def install(root: Path, kit, *desired) -> Path:
    with Installer(root, kit.config()) as agent:
        for wanted in desired:
            agent.assign(wanted)
    return root


@pytest.fixture(scope="module")
def scenarios(kit, tmp_path_factory) -> dict[str, Scenario]:
    """Upgrade (commit, with a leftover version to collect), unhealthy upgrade (rollback), server-asked downgrade."""
    b = kit.bundles
    base = tmp_path_factory.mktemp("templates")
    with_failed = install(base / "v1-and-failed-v3", kit, kit.desired(b.v1), kit.desired(b.slow))
    only_v1 = install(base / "v1", kit, kit.desired(b.v1))
    on_v2 = install(base / "v2", kit, kit.desired(b.v1), kit.desired(b.v2))
    return {
        "commit": Scenario(
            "commit",
            with_failed,
            kit.desired(b.v2).model_dump_json(),
            b.v1.slot,
            b.v2.slot,
            UpdateState.COMMITTED,
            b.v2.slot,
        ),
        "rollback": Scenario(
            "rollback",
            only_v1,
            kit.desired(b.slow).model_dump_json(),
            b.v1.slot,
            b.slow.slot,
            UpdateState.ROLLED_BACK,
            b.v1.slot,
        ),
        "downgrade": Scenario(
            "downgrade",
            on_v2,
            kit.desired(b.v1, rollback=True).model_dump_json(),
            b.v2.slot,
            b.v1.slot,
            UpdateState.COMMITTED,
            b.v1.slot,
        ),
    }


@dataclass
class Runner:
    """Runs one scenario in a fresh copy of its template: a killed run, the checks, the restart, the checks."""

    zygote: Zygote
    kit: object
    workdir: Path
    counter: itertools.count = field(default_factory=itertools.count)

    def job(self, scenario: Scenario, root: Path, crash_at: str | None) -> dict[str, object]:
        kit = self.kit
        return {
            "root": str(root),
            "crash_at": crash_at,
            "key": next(iter(kit.bundles.trusted.keys.values())).raw.hex(),
            "device": kit.device.model_dump_json(),
            "desired": scenario.desired,
            "events": str(root.parent / "events.jsonl"),
        }

    def fresh(self, scenario: Scenario) -> Path:
        run_dir = self.workdir / f"{scenario.name}-{next(self.counter)}"
        return self.kit.copy_store(scenario.template, run_dir / "agent")

    def run(self, scenario: Scenario, root: Path, crash_at: str | None = None, kill_after: float | None = None) -> int:
        job_id, pid = self.zygote.start(self.job(scenario, root, crash_at))
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.zygote.wait(job_id)

    def check_after_kill(self, scenario: Scenario, root: Path) -> str:
        """``current`` is old or new and complete; return the journaled state for the tally."""
        store = SlotStore(root)
        current = store.link(MODEL, "current")
        assert current in {scenario.old, scenario.new}, (scenario.name, current)
        store.verify(store.slot(MODEL, current), self.kit.bundles.trusted)
        previous = store.link(MODEL, "previous")
        assert previous is None or store.exists(MODEL, previous), f"previous -> missing {previous}"
        journal = root / "models" / MODEL / "journal.json"
        return json.loads(journal.read_text())["state"] if journal.exists() else "none"

    def check_converged(self, scenario: Scenario, root: Path) -> None:
        """After a restart the device ends where an uninterrupted run ends, with nothing left over."""
        store = SlotStore(root)
        with Installer(root, self.kit.config()) as agent:
            journal = agent.journal(MODEL)
        assert (journal.state, store.link(MODEL, "current")) == (scenario.final_state, scenario.final_current)
        store.verify(store.slot(MODEL, scenario.final_current), self.kit.bundles.trusted)
        assert self.kit.leftovers(root) == [], scenario.name
        kinds = {json.loads(line)["kind"] for line in (root.parent / "events.jsonl").read_text().splitlines()}
        expected = {"committed"} if scenario.final_state == UpdateState.COMMITTED else {"rolled_back"}
        assert expected <= kinds, (scenario.name, kinds)

    def crash_and_recover(self, scenario: Scenario, crash_at: str | None, kill_after: float | None) -> tuple[int, str]:
        root = self.fresh(scenario)
        code = self.run(scenario, root, crash_at, kill_after)
        assert code in {0, -signal.SIGKILL}, f"{scenario.name} run failed with {code}"
        state = self.check_after_kill(scenario, root)
        assert self.run(scenario, root) == 0, f"{scenario.name}: the restarted agent failed"
        self.check_converged(scenario, root)
        return code, state


@pytest.fixture(scope="module")
def runner(zygote, kit, tmp_path_factory) -> Runner:
    return Runner(zygote, kit, tmp_path_factory.mktemp("runs"))


def test_every_named_step_survives_a_sigkill(runner, scenarios):
    jobs = [(scenario, point) for point in CrashPoint for scenario in scenarios.values()]
    with ThreadPoolExecutor(WORKERS) as pool:
        codes = list(pool.map(lambda job: runner.crash_and_recover(job[0], job[1].value, None)[0], jobs))

    hit = collections.defaultdict(list)
    for (scenario, point), code in zip(jobs, codes, strict=True):
        if code == -signal.SIGKILL:
            hit[point].append(scenario.name)
    report = f"{sum(map(len, hit.values()))} of {len(jobs)} runs; { ({p.value: s for p, s in hit.items()}) }"
    print(f"\nnamed-step kills: {report}")  # noqa: T201 - which step killed which scenario is this test's report
    assert set(hit) == set(CrashPoint), f"never reached: {set(CrashPoint) - set(hit)}"
    assert set(hit[CrashPoint.MID_ROLLBACK]) == {"rollback"}
    assert "commit" in hit[CrashPoint.BEFORE_COMMIT]
    assert "rollback" not in hit[CrashPoint.AFTER_COMMIT]


def test_hundreds_of_kills_at_random_moments_never_break_the_device(runner, scenarios):
    durations = {name: calibrate(runner, scenario) for name, scenario in scenarios.items()}
    rng = random.Random(20261123)  # noqa: S311 - reproducible kill times, not cryptography
    tally = Tally()
    order = itertools.cycle(scenarios.values())

    def one(scenario: Scenario) -> None:
        delay = rng.uniform(0.0, durations[scenario.name])
        code, state = runner.crash_and_recover(scenario, None, delay)
        tally.add(code, state)

    with ThreadPoolExecutor(WORKERS) as pool:
        while tally.landed < RANDOM_KILLS and tally.landed + tally.missed < 3 * RANDOM_KILLS:
            list(pool.map(one, [next(order) for _ in range(WORKERS * 4)]))

    report = f"{tally.landed} landed, {tally.missed} missed (the run had ended); journal state at the kill: "
    report += f"{dict(tally.by_state)}; calibrated run times (s): { ({k: round(v, 3) for k, v in durations.items()}) }"
    print(f"\nrandom kills: {report}")  # noqa: T201 - the measured kill counts are what this test reports
    assert tally.landed >= RANDOM_KILLS
    assert len(tally.by_state) >= 4, "kills should land in many states"


def calibrate(runner: Runner, scenario: Scenario) -> float:
    """Median wall time of an uninterrupted run while others run beside it."""

    def timed(_: int) -> float:
        root = runner.fresh(scenario)
        started = time.monotonic()
        assert runner.run(scenario, root) == 0
        return time.monotonic() - started

    with ThreadPoolExecutor(WORKERS) as pool:
        return statistics.median(pool.map(timed, range(WORKERS)))
