"""Simulator scale: the largest fleet of real agents one machine sustains (DESIGN §13, issue 7).

Each size N runs a real server (its own process, SQLite) and N virtual devices,
each the real agent (own model store on tmpfs, ONNX Runtime Predictor inline,
SQLite outbox, HTTP through the simulator's one keep-alive connection pool) on
one simulated clock: enroll and install v1 (the first round), then steady windows
in which every device runs 200 inferences in one batch, checks in and sends its
summary, the reconciler looks once and the drift job runs once. Measured per
size: set-up, the install round, the median steady round, CPU seconds per steady
round of the simulator and of the server, resident memory of both, and open
files per device of both.

"Sustains" means a steady round (one 5-minute window of fleet time for every
device) takes less than the window itself in wall time: the machine keeps up with
the fleet in real time. The largest sustained fleet is projected from the biggest
measured size, bounded by time (window / round time per device) and by memory
(available memory / resident memory per device) and by open files (the process's
limit, raised to its hard limit / descriptors per device: an idle device holds the
lock on its running version; the outbox is open only while the device steps and
the connection pool is shared), and the result says which bound binds. Results go
to ``bench/results/sim.json``; ``--quick`` proves the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from modelfleet.sim import Fleet, parse_scenario
from modelfleet.sim._fleet import raise_open_files_limit
from modelfleet.sim._training import build_version

ROOT = Path(__file__).resolve().parent
SCENARIO = {
    "name": "scale",
    "inferences": 200,
    "models": {"1.0.0": {"gains": [0.85, 1.0, 1.15], "temperatures": [8]}},
    "timeline": [{"at": "0m", "push": "1.0.0", "pin": True}],
    "sites": [
        {"name": "plant-north", "share": 0.5, "temperature": 8},
        {"name": "plant-south", "share": 0.5, "temperature": 8},
    ],
}


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MB (/proc)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def open_files(pid: int | None = None) -> int:
    """File descriptors a process holds."""
    return sum(1 for _ in Path(f"/proc/{pid or os.getpid()}/fd").iterdir())


def cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds a process used so far (/proc)."""
    fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def available_mb() -> float:
    """MemAvailable in MB."""
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable:"))
    return int(line.split()[1]) / 1024


def measure(devices: int, rounds: int) -> dict[str, Any]:
    """One fleet size: set-up, install round, steady rounds, memory."""
    scenario = parse_scenario(SCENARIO)
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as scratch:
        base_rss, base_fds = rss_mb(), open_files()
        started = time.perf_counter()
        fleet = Fleet(scenario, devices, Path(scratch))
        setup_s = time.perf_counter() - started
        try:
            built = build_version("1.0.0", 1, scenario.models["1.0.0"], [fleet.server.signing_key], Path(scratch) / "b")
            fleet.push(built.path, "1.0.0")
            fleet.pin("1.0.0")
            started = time.perf_counter()
            first = fleet.round()
            install_s = time.perf_counter() - started
            steady = []
            cpu_before = cpu_s(), cpu_s(fleet.server.pid)
            for _ in range(rounds):
                started = time.perf_counter()
                fleet.round()
                steady.append(time.perf_counter() - started)
            sim_cpu = (cpu_s() - cpu_before[0]) / rounds
            server_cpu = (cpu_s(fleet.server.pid) - cpu_before[1]) / rounds
            sim_rss, server_rss = rss_mb(), rss_mb(fleet.server.pid)
            sim_fds, server_fds = open_files(), open_files(fleet.server.pid)
            running = fleet.log.rounds[-1].running
            failed = fleet.log.rounds[-1].failed_steps
            sent, stored = fleet.summaries_sent(), fleet.summaries_stored()
        finally:
            fleet.close()
            fleet.stop_server()
    round_s = statistics.median(steady)
    window_s = scenario.window.total_seconds()
    per_device_mb = (sim_rss - base_rss + server_rss) / devices
    return {
        "devices": devices,
        "setup_s": round(setup_s, 2),
        "install_round_s": round(install_s, 2),
        "installed": first.running,
        "steady_round_s": round(round_s, 3),
        "steady_rounds": [round(s, 3) for s in steady],
        "device_steps_per_s": round(devices / round_s, 1),
        "cpu_s_per_round": {"sim": round(sim_cpu, 2), "server": round(server_cpu, 2)},
        "cpu_ms_per_device_step": round((sim_cpu + server_cpu) * 1000 / devices, 2),
        "realtime_factor": round(window_s / round_s, 1),
        "sim_rss_mb": round(sim_rss, 1),
        "server_rss_mb": round(server_rss, 1),
        "mb_per_device": round(per_device_mb, 2),
        "fds_per_device": round((sim_fds - base_fds) / devices, 2),
        "server_fds_per_device": round(server_fds / devices, 2),
        "running_at_end": running,
        "failed_steps": failed,
        "summaries": {"sent": sent, "stored": stored},
    }


def main() -> None:
    """Measure every size, project the largest sustained fleet, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,1000,2000", help="fleet sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="steady rounds per size")
    parser.add_argument("--quick", action="store_true", help="one small size, to prove the harness")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "sim.json")
    parser.add_argument("--merge", action="store_true", help="keep the sizes already in --out (measured earlier)")
    args = parser.parse_args()
    sizes = [40] if args.quick else [int(s) for s in args.sizes.split(",")]
    results = json.loads(args.out.read_text())["sizes"] if args.merge and args.out.exists() else []
    results = [r for r in results if r["devices"] not in sizes]
    for size in sizes:
        result = measure(size, 1 if args.quick else args.rounds)
        print(json.dumps(result), flush=True)
        results.append(result)
    results.sort(key=lambda r: r["devices"])
    biggest = results[-1]
    window_s = 300.0
    by_time = int(biggest["devices"] * window_s / biggest["steady_round_s"])
    by_memory = int((available_mb() + biggest["sim_rss_mb"] + biggest["server_rss_mb"]) / biggest["mb_per_device"])
    fd_limit = raise_open_files_limit()
    by_files = int(fd_limit / max(biggest["fds_per_device"], biggest["server_fds_per_device"]))
    bounds = {"time": by_time, "memory": by_memory, "open_files": by_files}
    document = {
        "benchmark": "sim",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "sizes": results,
        "largest_measured": biggest["devices"],
        "largest_measured_sustained": biggest["steady_round_s"] < window_s,
        "projected_largest_sustained": min(bounds.values()),
        "projection_bound_by": min(bounds, key=lambda name: bounds[name]),
        "projection": {**{f"by_{name}": value for name, value in bounds.items()}, "window_s": window_s},
        "open_files_limit": fd_limit,
    }
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({k: v for k, v in document.items() if k != "sizes"}, indent=2))


if __name__ == "__main__":
    main()
