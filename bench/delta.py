"""Delta updates: our tensor-aware delta against bsdiff4, zstd with the old file as prefix and xdelta3 (issue 8).

DESIGN §9 and §13, ADR 0009. For model pairs built in code
(``modelfleet.sim._model_pairs``: an MLP in FP32 or INT8 QDQ with per-tensor or
per-channel scales, about 0.5 MB, 2 MB and 35 MB of weights) and three changes
(``sparse``: 5% of the weights retrained; ``finetune``: every weight moved by
N(0, 0.01 std), INT8 re-quantized with the old scales; ``last_layer``: only the
head retrained), each tool encodes and applies the delta in its own child
process, so time and peak memory (``ru_maxrss`` from ``wait4``) are its own:

- ``ours``: ``modelfleet.bundle.delta.encode`` / ``apply`` with default options
  (its own zstd and bsdiff4 candidates run up to 8 MiB; above, only the tensor codec;
  tensor deltas in format 2, a coder per byte plane);
- ``bsdiff4``: ``bsdiff4.diff`` / ``bsdiff4.patch`` on the whole file;
- ``zstd``: python-zstandard level 19, the old file as raw-content dictionary,
  window and match tables spanning both files, long-distance matching on;
- ``xdelta3``: ``xdelta3 -9 -e -s OLD`` when the binary is on PATH (skipped otherwise).

The floor is the empirical (order-0) entropy of the weight changes: per tensor
the cheapest of the byte-plane entropies of the differences (wrapping
subtraction for integers, XOR of bit patterns for floats) or of the new values,
densely or as positions (binary entropy of the change mask) plus values, summed
over tensors; ``floor_with_rest`` adds what the best generic tool pays for the
bytes outside the tensors (manifest, graph, tar headers), which every tool must
send. Each result is checked byte for byte before it counts. Peak memory of a
child is reported net of an idle child that imports the same modules.

Goals (issue 8): never larger than the best generic; <= 0.75x the best generic
on FP32 fine-tunes and <= 0.92x on INT8 fine-tunes and sparse retrains; within
1.1x of the floor; on 35 MB models build time <= 0.2x bsdiff4's and apply memory
<= 2x the model size. Results go to ``bench/results/delta.json``; ``--quick``
skips the 35 MB models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.sim._model_pairs import SCENARIOS, BundlePair, bundle_pair

ROOT = Path(__file__).resolve().parent
SIZES = (512 * 1024, 2 * 1024 * 1024, 35 * 1024 * 1024)
PRECISIONS = ("int8", "int8_channel", "fp32")
GOALS = {
    "fp32_finetune_vs_generic": 0.75,
    "int8_finetune_and_sparse_vs_generic": 0.92,
    "vs_floor": 1.1,
    "large_build_time_vs_bsdiff4": 0.2,
    "large_apply_memory_vs_model": 2.0,
}
LARGE = 8 * 1024 * 1024
_MB = 1e6


# ------------------------------------------------------------------ child processes


def _worker(op: str, args: list[str]) -> None:
    """Run one encode or apply in this (child) process and print its time as JSON."""
    import bsdiff4  # noqa: PLC0415 - the child imports what every tool needs, like the idle baseline

    from modelfleet.bundle._delta_generic import prefix_reader, zstd_prefix_encode  # noqa: PLC0415
    from modelfleet.bundle.delta import apply, encode  # noqa: PLC0415

    if op == "idle":
        print(json.dumps({"seconds": 0.0, "peak_rss": _own_peak_rss()}))
        return
    a, b, out = (Path(x) for x in args)
    started = time.perf_counter()
    if op == "ours-encode":
        out.write_bytes(encode(a, b).data)
    elif op == "ours-apply":
        apply(a, b, out)
    elif op == "bsdiff4-encode":
        out.write_bytes(bsdiff4.diff(a.read_bytes(), b.read_bytes()))
    elif op == "bsdiff4-apply":
        out.write_bytes(bsdiff4.patch(a.read_bytes(), b.read_bytes()))
    elif op == "zstd-encode":
        out.write_bytes(zstd_prefix_encode(a.read_bytes(), b.read_bytes(), 19))
    elif op == "zstd-apply":
        base, frame = a.read_bytes(), b.read_bytes()
        target_size = int(os.environ["DELTA_TARGET_SIZE"])
        out.write_bytes(prefix_reader(base, frame, target_size).read(target_size + 1))
    else:
        message = f"unknown op {op}"
        raise SystemExit(message)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss": _own_peak_rss()}))


def _own_peak_rss() -> int:
    """This process's peak resident memory since its exec (VmHWM; ``ru_maxrss`` would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Run:
    """One child's own time and peak resident memory."""

    seconds: float
    peak_rss: int


def _measure(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a child to completion; its own wall time and peak resident memory (bytes).

    Python children report their own peak (VmHWM after exec). Other tools run under
    ``/usr/bin/time`` when present: a forked child's ``ru_maxrss`` counts the
    parent's memory before the exec.
    """
    timed = not argv[0].endswith("python") and Path("/usr/bin/time").exists() and argv[0] != sys.executable
    if timed:
        argv = ["/usr/bin/time", "-f", "%M", *argv]
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stdout = child.stdout.read().decode() if child.stdout else ""
    stderr = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        message = f"{argv[2:4]} failed: {stderr[-2000:]}"
        raise RuntimeError(message)
    if stdout.strip().startswith("{"):
        reported = json.loads(stdout)
        return Run(reported["seconds"], reported["peak_rss"])
    peak = int(stderr.strip().splitlines()[-1]) * 1024 if timed else usage.ru_maxrss * 1024
    return Run(wall, peak)


def _python(op: str, *paths: Path, env: dict[str, str] | None = None) -> Run:
    return _measure([sys.executable, str(Path(__file__).resolve()), "--worker", op, *map(str, paths)], env)


def _tool(name: str, old: Path, new: Path, work: Path) -> dict[str, Any] | None:
    """Encode and apply with one tool; sizes, times, memory; ``None`` when the tool is absent."""
    delta, rebuilt = work / f"{name}.delta", work / f"{name}.rebuilt"
    env = {**os.environ, "DELTA_TARGET_SIZE": str(new.stat().st_size)}
    if name == "xdelta3":
        if shutil.which("xdelta3") is None:
            return None
        build = _measure(["xdelta3", "-f", "-9", "-e", "-s", str(old), str(new), str(delta)])
        use = _measure(["xdelta3", "-f", "-d", "-s", str(old), str(delta), str(rebuilt)])
    else:
        build = _python(f"{name}-encode", old, new, delta, env=env)
        use = _python(f"{name}-apply", old, delta, rebuilt, env=env)
    if rebuilt.read_bytes() != new.read_bytes():
        message = f"{name} did not rebuild the new bundle exactly"
        raise RuntimeError(message)
    result = {
        "bytes": delta.stat().st_size,
        "build_s": round(build.seconds, 3),
        "apply_s": round(use.seconds, 3),
        "build_peak_rss": build.peak_rss,
        "apply_peak_rss": use.peak_rss,
    }
    if name == "ours":
        from modelfleet.bundle.delta import read_delta_header  # noqa: PLC0415

        header = read_delta_header(delta)
        result["codec"] = header.codec.value
        result["format_version"] = header.format_version
        result["header_bytes"] = header.length
    return result


# ------------------------------------------------------------------ the floor


def _entropy(values: np.ndarray) -> float:
    """Order-0 entropy in bytes of the byte planes of ``values`` (exact, no sampling)."""
    if values.size == 0:
        return 0.0
    planes = np.ascontiguousarray(values).view(np.uint8).reshape(values.size, -1).T
    total = 0.0
    for plane in planes:
        counts = np.bincount(plane, minlength=256)
        counts = counts[counts > 0]
        total += float(-(counts * np.log2(counts / plane.size)).sum()) / 8
    return total


def _tensor_floor(old: np.ndarray, new: np.ndarray) -> float:
    width = old.dtype.itemsize
    unsigned = np.dtype(f"<u{width}")
    a, b = old.reshape(-1).view(unsigned), new.reshape(-1).view(unsigned)
    if old.dtype.kind in "iu":
        signed = (b - a).view(f"<i{width}")
        diff = ((signed << 1) ^ (signed >> (8 * width - 1))).view(unsigned)
    else:
        diff = a ^ b
    changed = np.flatnonzero(diff)
    if changed.size == 0:
        return 0.0
    p = changed.size / diff.size
    mask = 0.0 if p >= 1 else diff.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
    sparse = mask + min(_entropy(diff[changed]), _entropy(b[changed]))
    return min(_entropy(diff), _entropy(b), sparse)


def _floor(pair: BundlePair) -> float:
    return sum(_tensor_floor(pair.old_weights[name], pair.new_weights[name]) for name in pair.new_weights)


def _rest_bytes(old: Path, new: Path) -> int:
    """What zstd-prefix pays for the bytes outside all tensors (manifest, graph, tar headers)."""
    from modelfleet.bundle._delta_encode import _cut  # noqa: PLC0415
    from modelfleet.bundle._delta_generic import zstd_prefix_encode  # noqa: PLC0415
    from modelfleet.bundle._delta_plan import bundle_spans  # noqa: PLC0415

    cut = []
    for path in (old, new):
        data = path.read_bytes()
        spans = sorted((s.offset, s.length) for group in bundle_spans(data).values() for s in group)
        cut.append(_cut(data, spans))
    return len(zstd_prefix_encode(cut[0], cut[1], 19))


# ------------------------------------------------------------------ one pair


def _goals(row: dict[str, Any]) -> dict[str, Any]:
    ours = row["tools"]["ours"]["bytes"] - row["tools"]["ours"]["header_bytes"]
    # The generic tools ship no identity; ours carries base and target sha256 + size in its header.
    goals: dict[str, Any] = {"not_larger_than_best_generic": bool(ours <= row["best_generic_bytes"])}
    limit = None
    if row["scenario"] == "finetune" and row["precision"] == "fp32":
        limit = GOALS["fp32_finetune_vs_generic"]
    elif row["scenario"] in ("finetune", "sparse") and row["precision"] != "fp32":
        limit = GOALS["int8_finetune_and_sparse_vs_generic"]
    if limit is not None:
        goals["vs_generic_goal"] = limit
        goals["vs_generic_met"] = bool(row["ours_vs_best_generic"] <= limit)
    goals["vs_floor_met"] = bool(row["ours_vs_floor_with_rest"] <= GOALS["vs_floor"])
    if row["model_bytes"] >= LARGE and "bsdiff4" in row["tools"]:
        ratio = row["tools"]["ours"]["build_s"] / row["tools"]["bsdiff4"]["build_s"]
        goals["build_time_vs_bsdiff4"] = round(ratio, 3)
        goals["build_time_met"] = bool(ratio <= GOALS["large_build_time_vs_bsdiff4"])
        goals["apply_memory_vs_model"] = round(row["ours_apply_net_rss"] / row["full_bytes"], 3)
        goals["apply_memory_met"] = bool(goals["apply_memory_vs_model"] <= GOALS["large_apply_memory_vs_model"])
    return goals


def _pair_row(work: Path, size: int, precision: str, scenario: str, idle_rss: int) -> dict[str, Any]:
    pair = bundle_pair(work, model_bytes=size, precision=precision, scenario=scenario)  # type: ignore[arg-type]
    tools = {}
    for name in ("ours", "bsdiff4", "zstd", "xdelta3"):
        result = _tool(name, pair.old, pair.new, pair.old.parent)
        if result is not None:
            tools[name] = result
    floor = _floor(pair)
    rest = _rest_bytes(pair.old, pair.new)
    best = min(t["bytes"] for name, t in tools.items() if name != "ours")
    ours = tools["ours"]["bytes"]
    row = {
        "model_bytes": size,
        "precision": precision,
        "scenario": scenario,
        "full_bytes": pair.new.stat().st_size,
        "tools": tools,
        "floor_bytes": round(floor),
        "rest_bytes": rest,
        "floor_with_rest_bytes": round(floor) + rest,
        "best_generic_bytes": best,
        "ours_vs_best_generic": round(ours / best, 4),
        "ours_vs_floor": round(ours / max(floor, 1.0), 4),
        "ours_vs_floor_with_rest": round(ours / (floor + rest), 4),
        "ours_apply_net_rss": max(0, tools["ours"]["apply_peak_rss"] - idle_rss),
    }
    row["goals"] = _goals(row)
    shutil.rmtree(pair.old.parent)
    return row


def _line(row: dict[str, Any]) -> str:
    t = row["tools"]
    size = lambda name: f"{t[name]['bytes'] / _MB:8.3f}" if name in t else "       -"  # noqa: E731
    goal = row["goals"]
    marks = "body<=generic" if goal["not_larger_than_best_generic"] else "LARGER"
    if "vs_generic_met" in goal:
        marks += f" goal<={goal['vs_generic_goal']}:{'met' if goal['vs_generic_met'] else 'MISSED'}"
    if "build_time_vs_bsdiff4" in goal:
        marks += (
            f" build/bsdiff4 {goal['build_time_vs_bsdiff4']:.3f} apply-mem/model {goal['apply_memory_vs_model']:.2f}"
        )
    return (
        f"{row['precision']:<12} {row['scenario']:<10} {row['full_bytes'] / _MB:7.2f} "
        f"{size('ours')} {t['ours']['codec']:<7} {size('bsdiff4')} {size('zstd')} {size('xdelta3')} "
        f"{row['floor_with_rest_bytes'] / _MB:8.3f} {row['ours_vs_best_generic']:7.3f} "
        f"{row['ours_vs_floor_with_rest']:7.3f} {t['ours']['build_s']:7.2f} {t['bsdiff4']['build_s']:8.2f} "
        f"{t['ours']['apply_s']:6.2f} {row['ours_apply_net_rss'] / _MB:7.1f}  {marks}"
    )


HEADER = (
    "precision    change     full MB  ours MB codec   bsdiff4     zstd  xdelta3 floor MB ours/gen ours/flr "
    "build s bsdiff4 s apply s applyMB  goals"
)


def main(argv: list[str] | None = None) -> int:
    """Run the pairs, print one line per pair and the goals, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="skip the 35 MB models")
    parser.add_argument("--sizes", type=int, nargs="+", help="model sizes in bytes (default 0.5, 2 and 35 MiB)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "delta.json")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1:])
        return 0
    sizes = args.sizes or [s for s in SIZES if not (args.quick and s >= LARGE)]
    idle_rss = _python("idle").peak_rss
    print(f"xdelta3: {shutil.which('xdelta3') or 'not installed (skipped)'}; idle child {idle_rss / _MB:.1f} MB")
    print(HEADER)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as directory:
        for size in sizes:
            for precision in args.precisions:
                for scenario in args.scenarios:
                    row = _pair_row(Path(directory), size, precision, scenario, idle_rss)
                    rows.append(row)
                    print(_line(row), flush=True)
    summary = _summary(rows)
    for line in summary["lines"]:
        print(line)
    report = {
        "benchmark": "delta",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {
            "sizes": sizes,
            "precisions": args.precisions,
            "scenarios": args.scenarios,
            "quick": args.quick,
            "idle_child_rss": idle_rss,
        },
        "goals": GOALS,
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    never_larger = all(r["goals"]["not_larger_than_best_generic"] for r in rows)
    with_goal = [r for r in rows if "vs_generic_met" in r["goals"]]
    floor_worst = max(r["ours_vs_floor_with_rest"] for r in rows)
    lines = [
        (
            "never larger than the best generic (body, without our "
            f"{rows[0]['tools']['ours']['header_bytes']}-byte header): {never_larger}"
        ),
        f"ratio goals met: {sum(r['goals']['vs_generic_met'] for r in with_goal)} of {len(with_goal)}",
        f"ours / floor (with rest): worst {floor_worst:.3f} (goal <= {GOALS['vs_floor']})",
    ]
    large = [r for r in rows if "build_time_vs_bsdiff4" in r["goals"]]
    if large:
        worst_build = max(r["goals"]["build_time_vs_bsdiff4"] for r in large)
        worst_memory = max(r["goals"]["apply_memory_vs_model"] for r in large)
        lines.append(f"35 MB: build time ours / bsdiff4 worst {worst_build:.3f} (goal <= 0.2)")
        lines.append(f"35 MB: apply memory / model size worst {worst_memory:.2f} (goal <= 2)")
    return {"never_larger": never_larger, "floor_worst": floor_worst, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
