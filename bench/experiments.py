"""Devices an experiment needs to find the same effect: A/B against shadow against time-slice.

DESIGN §6, §7, §13, ADR 0007. On two simulated fleets — one whose devices
differ a lot from each other (device sd four times the within-device sd) and
one whose devices are alike (equal sds) — and for the same true effect on a
per-device accuracy, every kind is planned by ``plan_experiment`` and then
simulated with the production analysis read after every device
(``simulate_experiments``):

- ``ab``: half the devices on each version, device-level AIPW confidence sequence;
- ``shadow``: both models on the same inputs of every device (errors correlated 0.5);
- ``time_slice``: the versions alternate in ABBA/BAAB windows, with a linear drift.

Per fleet and kind it reports the planned devices, the devices by which
``power`` of the runs had found the winner (the simulated need), the share of
runs that found it by the planned size, and the A/A false-winner share with
its Clopper-Pearson interval. The headline is the ratio A/B devices / paired
devices, planned and simulated, from the same run. Numpy only, seeded; results
go to ``bench/results/experiments.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.stats import (
    ExperimentKind,
    ExperimentPlan,
    ExperimentScenario,
    ExperimentSimulation,
    clopper_pearson,
    paired_difference_sd,
    plan_experiment,
    simulate_experiments,
)

BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "results" / "experiments.json"
KINDS: tuple[ExperimentKind, ...] = ("ab", "shadow", "time_slice")
EFFECT = 0.01  # one point of accuracy
WITHIN_SD = 0.02  # one device's accuracy from one day's exposure to the next
PAIR_CORRELATION = 0.5  # both models on the same inputs make correlated mistakes
WINDOWS = 8  # ABBA BAAB: two blocks of 3-hour windows in a day
TREND = 0.002  # accuracy lost per window (sensor aging), as large as a fifth of the effect


@dataclass(frozen=True, slots=True)
class Fleet:
    """A simulated fleet: how much devices differ from each other and within themselves."""

    name: str
    description: str
    device_sd: float
    within_sd: float = WITHIN_SD


FLEETS = (
    Fleet("different_devices", "device accuracy sd 0.08 (sites, hardware), within-device sd 0.02", 0.08),
    Fleet("alike_devices", "device accuracy sd 0.02, within-device sd 0.02", 0.02),
)


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line settings."""

    runs: int
    seed: int
    alpha: float
    power: float
    batch_runs: int
    out: Path


def plan(kind: ExperimentKind, fleet: Fleet, options: Options) -> ExperimentPlan:
    """Plan ``kind`` on ``fleet`` with the variance an operator would read from it."""
    if kind == "ab":
        variance = {"device_sd": float(np.hypot(fleet.device_sd, fleet.within_sd))}
    else:
        correlation = PAIR_CORRELATION if kind == "shadow" else 0.0
        variance = {"difference_sd": paired_difference_sd(kind, fleet.within_sd, pair_correlation=correlation)}
    return plan_experiment(
        kind, effect=EFFECT, exposure=timedelta(days=1), alpha=options.alpha, power=options.power, **variance
    )


def simulate(
    kind: ExperimentKind, scenario: ExperimentScenario, planned: int, options: Options, seed: Sequence[int]
) -> ExperimentSimulation:
    """Simulate ``options.runs`` runs in batches (memory) and return them as one simulation."""
    rng = np.random.default_rng(list(seed))
    parts = []
    for start in range(0, options.runs, options.batch_runs):
        runs = min(options.batch_runs, options.runs - start)
        parts.append(simulate_experiments(rng, scenario, kind, runs=runs, planned_devices=planned, alpha=options.alpha))
    return ExperimentSimulation(
        verdict=np.concatenate([p.verdict for p in parts]),
        decision_devices=np.concatenate([p.decision_devices for p in parts]),
        winner=np.concatenate([p.winner for p in parts]),
    )


def measure(kind: ExperimentKind, fleet: Fleet, options: Options, seed: Sequence[int]) -> dict[str, Any]:
    """Plan one kind on one fleet, then simulate it with the effect and without (A/A)."""
    started = time.perf_counter()
    planned = plan(kind, fleet, options)
    scenario = ExperimentScenario(
        devices=2 * planned.devices_needed,
        effect=EFFECT,
        device_sd=fleet.device_sd,
        within_sd=fleet.within_sd,
        pair_correlation=PAIR_CORRELATION,
        windows=WINDOWS,
        trend=TREND,
    )
    found = simulate(kind, scenario, planned.devices_needed, options, (*seed, 0))
    null = ExperimentScenario(**(asdict(scenario) | {"effect": 0.0, "devices": planned.devices_needed}))
    aa = simulate(kind, null, planned.devices_needed, options, (*seed, 1))
    false_winners = aa.count("winner")
    by_plan = round(found.rate("winner", by_devices=planned.devices_needed) * options.runs)
    return {
        "planned_devices": planned.devices_needed,
        "stream_sd": planned.stream_sd,
        "devices_for_power": found.devices_for(options.power),
        "power_by_plan": by_plan / options.runs,
        "power_by_plan_ci95": list(clopper_pearson(by_plan, options.runs)),
        "median_devices_to_winner": int(np.median(found.decision_devices[found.verdict == 1]))
        if found.count("winner")
        else None,
        "false_winner": false_winners / options.runs,
        "false_winner_ci95": list(clopper_pearson(false_winners, options.runs)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def ratios(kinds: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Return A/B devices over each paired kind's devices, planned and simulated."""
    out: dict[str, float | None] = {}
    for kind in ("shadow", "time_slice"):
        out[f"ab_over_{kind}_planned"] = round(kinds["ab"]["planned_devices"] / kinds[kind]["planned_devices"], 2)
        simulated = kinds[kind]["devices_for_power"]
        ab = kinds["ab"]["devices_for_power"]
        out[f"ab_over_{kind}_simulated"] = round(ab / simulated, 2) if simulated > 0 and ab > 0 else None
    return out


def run(options: Options) -> dict[str, Any]:
    """Measure every kind on every fleet and return the results."""
    results: dict[str, Any] = {
        "benchmark": "experiments",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items() if k != "out"}
        | {
            "effect": EFFECT,
            "pair_correlation": PAIR_CORRELATION,
            "windows": WINDOWS,
            "trend_per_window": TREND,
        },
        "fleets": [],
    }
    started = time.perf_counter()
    for i, fleet in enumerate(FLEETS):
        kinds = {kind: measure(kind, fleet, options, (options.seed, i, j)) for j, kind in enumerate(KINDS)}
        results["fleets"].append(asdict(fleet) | {"kinds": kinds, "ratios": ratios(kinds)})
        print(f"[{fleet.name}] {sum(k['seconds'] for k in kinds.values()):.1f} s", file=sys.stderr)
    results["elapsed_s"] = round(time.perf_counter() - started, 2)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def table(results: dict[str, Any]) -> list[str]:
    """Return the printed report: one table per fleet, then the ratios."""
    settings = results["settings"]
    lines = []
    for fleet in results["fleets"]:
        lines += [
            "",
            (
                f"{fleet['name']}: {fleet['description']}; effect {settings['effect']}, "
                f"alpha {settings['alpha']}, power {settings['power']}"
            ),
            f"{'kind':<11} {'planned':>8} {'simulated':>10} {'power by plan':>14} {'A/A false winner':>17}",
        ]
        for kind, k in fleet["kinds"].items():
            lines.append(
                f"{kind:<11} {k['planned_devices']:>8} {k['devices_for_power']:>10} "
                f"{k['power_by_plan']:>14.1%} {k['false_winner']:>17.2%}"
            )
        r = fleet["ratios"]
        lines.append(
            f"devices A/B / shadow: {r['ab_over_shadow_simulated']}x simulated "
            f"({r['ab_over_shadow_planned']}x planned); "
            f"A/B / time-slice: {r['ab_over_time_slice_simulated']}x simulated "
            f"({r['ab_over_time_slice_planned']}x planned)"
        )
    return lines


def parse_options(argv: Sequence[str] | None) -> Options:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2000, help="simulated experiments per fleet and kind")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--batch-runs", type=int, default=100, help="runs simulated together (memory)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.batch_runs < 1:
        parser.error("--runs and --batch-runs must be positive")
    return Options(
        runs=args.runs, seed=args.seed, alpha=args.alpha, power=args.power, batch_runs=args.batch_runs, out=args.out
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables and write the JSON."""
    options = parse_options(argv)
    results = run(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for line in table(results):
        print(line)
    print(f"\n{options.runs} runs per fleet and kind, {results['elapsed_s']} s; results written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
