"""Rollout gates under injected regressions: ours against a fixed-horizon test, naive peeking and a threshold gate.

DESIGN §7 and §13, ADR 0004. For two metrics of the same simulated canary
stage (holdout 20 %, compared devices completing their exposure at a steady
rate, the reconciler looking every few minutes), and for regressions of 0
(A/A), 0.5, 1 and 2 times the gate's margin, every run is drawn once and
handed, device for device, to:

- ``sequential``: our always-valid gate (``modelfleet.stats``), planned by ``plan_stage``;
- ``fixed_horizon``: the same gate rule on a Welch z-interval, read once at the
  devices a single-look test needs for the same power (``fixed_horizon_devices``);
- ``naive_peeking``: that z-interval and rule at every look;
- ``threshold``: a hawkBit ``errorCondition`` / AWS ``abortConfig`` gate
  (canary error rate above the fleet's + the margin, after a minimum count of
  canaries), which watches errors only and promotes at the end of its stage.

The metrics: ``confidence``, the mean top-1 confidence of a device (label-free;
device-to-device spread plus per-inference noise), which degrades *silently*
(the error stream of the same devices does not change); and ``error_rate``, each
device's share of failed inferences (skewed: most devices near 0), where the
regression is in the errors themselves.

Per cell it reports the share rolled back and promoted, median hours to a
decision and to a rollback, and the blast radius: device-hours on the regressed
model, the stage's canaries times the hours until rollback (runs that never roll
back count until the horizon, twice the sequential plan). The summary gives the
A/A false-rollback share with its Clopper-Pearson interval, and, at twice the
margin, our median time to roll back divided by the fixed-horizon test's time
(goal <= 0.6). Numpy only, no I/O but the JSON; seeds are fixed, and the same
seed is used for every regression size of a metric (common random numbers).
Results go to ``bench/results/gates.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.stats import (
    Direction,
    GateComparison,
    GateOutcome,
    RolloutScenario,
    ThresholdGate,
    clopper_pearson,
    compare_gates,
    fixed_horizon_devices,
    plan_stage,
    simulate_device_values,
)

BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "results" / "gates.json"
REGRESSIONS = (0.0, 0.5, 1.0, 2.0)
RATIO_GOAL = 0.6
POWER = 0.9
PILOT_DEVICES = 50_000

# Each device's error rate over its exposure window: 2 % at the median device, logit spread 1, ~50 inferences.
ERRORS = RolloutScenario(
    devices=1,
    treatment_probability=0.5,
    delta=0.0,
    metric="binomial",
    baseline=0.02,
    device_sd=1.0,
    mean_inferences=50.0,
)
ERRORS_MARGIN = 0.01  # the threshold gate aborts above the fleet's error rate plus this, the degradation it must catch


@dataclass(frozen=True, slots=True)
class Metric:
    """A gated metric: its device model, margin and direction, and what the threshold gate watches."""

    name: str
    description: str
    devices: RolloutScenario
    margin: float
    direction: Direction
    silent: bool  # the regression leaves the error stream unchanged


METRICS = (
    Metric(
        name="confidence",
        description="mean top-1 confidence per device (label-free); silent regression, errors unchanged",
        devices=RolloutScenario(
            devices=1,
            treatment_probability=0.5,
            delta=0.0,
            baseline=0.80,
            device_sd=0.03,
            inference_sd=0.15,
            mean_inferences=100.0,
        ),
        margin=0.01,
        direction="higher_is_better",
        silent=True,
    ),
    Metric(
        name="error_rate",
        description="per-device error rate; the regression is in the errors the threshold gate watches",
        devices=ERRORS,
        margin=0.01,
        direction="lower_is_better",
        silent=False,
    ),
)


@dataclass(frozen=True, slots=True)
class Options:
    """What one run of the benchmark measures."""

    runs: int
    seed: int
    alphas: tuple[float, ...]
    holdout: float
    arrival_rate_per_hour: float
    look_minutes: float
    threshold_min_canaries: int
    batch_runs: int
    out: Path


def worse(metric: Metric, size: float) -> float:
    """Return the raw-scale Δ of a regression of ``size`` margins (negative is worse when higher is better)."""
    sign = 1.0 if metric.direction == "higher_is_better" else -1.0
    return -sign * size * metric.margin


def device_sds(metric: Metric, holdout: float, rng: np.random.Generator) -> tuple[float, float]:
    """Return the sd of a canary device at a regression of the margin and of a holdout device, from a pilot draw.

    The planners need the fleet's device spread, as an operator would take it
    from telemetry; a regressed error rate is also more spread out.
    """
    sds = []
    for delta in (worse(metric, 1.0), 0.0):
        pilot = replace(metric.devices, devices=PILOT_DEVICES, treatment_probability=1.0 - holdout, delta=delta)
        values, treated = simulate_device_values(rng, pilot, 1)
        sds.append(float(values[treated if delta else ~treated].std(ddof=1)))
    return sds[0], sds[1]


def summarise_outcome(
    outcome: GateOutcome, *, rate: float, canaries: int, horizon: int, planned: int, bad: bool
) -> dict[str, Any]:
    """Return one procedure's numbers for one cell, in hours and device-hours; ``planned`` is its own plan."""
    runs = len(outcome.decision)
    rolled = outcome.count("rollback")
    to_rollback = outcome.devices_to("rollback")
    hours_spent = outcome.devices_spent() / rate
    exposed = np.minimum(to_rollback, horizon) / rate * canaries  # on the regressed model until rollback
    return {
        "rolled_back": rolled / runs,
        "rolled_back_ci95": list(clopper_pearson(rolled, runs)),
        "rolled_back_by_plan": float(np.mean(to_rollback <= planned)),
        "planned_hours": planned / rate,
        "promoted": outcome.rate("promote"),
        "undecided": outcome.rate("continue"),
        "median_hours_to_decision": float(np.median(hours_spent)),
        "median_hours_to_rollback": float(np.median(to_rollback[np.isfinite(to_rollback)]) / rate) if rolled else None,
        "median_hours_to_rollback_all_runs": _finite(float(np.median(to_rollback)) / rate),
        "blast_device_hours_mean": float(np.mean(exposed)) if bad else None,
        "blast_device_hours_median": float(np.median(exposed)) if bad else None,
        "horizon_hours": outcome.horizon_devices / rate,
    }


def _finite(x: float) -> float | None:
    """Return ``x``, or None (JSON null) when infinite."""
    return x if math.isfinite(x) else None


def run_cell(
    metric: Metric, *, alpha: float, size: float, plan: dict[str, Any], options: Options, seed: Sequence[int]
) -> dict[str, Any]:
    """Run every procedure on the same runs of one (metric, alpha, regression) cell."""
    horizon, canaries = plan["horizon_devices"], plan["canary_devices"]
    scenario = replace(
        metric.devices, devices=horizon, treatment_probability=1.0 - options.holdout, delta=worse(metric, size)
    )
    gate = ThresholdGate(
        threshold=plan["threshold"],
        min_treated=options.threshold_min_canaries,
        stage_devices=plan["fixed_devices"],
        watched=ERRORS if metric.silent else None,
    )
    started = time.perf_counter()
    comparison: GateComparison = compare_gates(
        np.random.default_rng(list(seed)),
        scenario,
        runs=options.runs,
        margin=metric.margin,
        direction=metric.direction,
        planned_devices=plan["sequential_devices"],
        fixed_devices=plan["fixed_devices"],
        threshold_gate=gate,
        alpha=alpha,
        look_every=plan["look_every_devices"],
        batch_runs=options.batch_runs,
    )
    rate = options.arrival_rate_per_hour
    gates = {
        name: summarise_outcome(
            outcome,
            rate=rate,
            canaries=canaries,
            horizon=horizon,
            planned=plan["sequential_devices" if name == "sequential" else "fixed_devices"],
            bad=size > 0,
        )
        for name, outcome in comparison.outcomes().items()
    }
    return {
        "metric": metric.name,
        "alpha": alpha,
        "regression_margins": size,
        "delta": worse(metric, size),
        "gates": gates,
        "seconds": round(time.perf_counter() - started, 3),
    }


def plan_metric(metric: Metric, alpha: float, options: Options, rng: np.random.Generator) -> dict[str, Any]:
    """Plan the stage for one metric and alpha: sequential and fixed-horizon sizes, horizon, looks, threshold."""
    canary_sd, control_sd = device_sds(metric, options.holdout, rng)
    plan = plan_stage(
        margin=metric.margin,
        device_sd=canary_sd,
        control_sd=control_sd,
        holdout_fraction=options.holdout,
        arrival_rate_per_hour=options.arrival_rate_per_hour,
        alpha=alpha,
        power=POWER,
    )
    fixed = fixed_horizon_devices(
        margin=metric.margin,
        device_sd=canary_sd,
        control_sd=control_sd,
        holdout_fraction=options.holdout,
        alpha=alpha,
        power=POWER,
    )
    horizon = 2 * plan.devices_needed
    return {
        "canary_device_sd": canary_sd,
        "control_device_sd": control_sd,
        "stream_sd": plan.stream_sd,
        "sequential_devices": plan.devices_needed,
        "sequential_hours": plan.devices_needed / options.arrival_rate_per_hour,
        "fixed_devices": fixed,
        "fixed_hours": fixed / options.arrival_rate_per_hour,
        "horizon_devices": horizon,
        "canary_devices": round((1.0 - options.holdout) * horizon),
        "look_every_devices": max(1, round(options.arrival_rate_per_hour * options.look_minutes / 60.0)),
        "threshold": ERRORS.control_mean() + ERRORS_MARGIN,
    }


def summary_for(metric: Metric, alpha: float, plan: dict[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the goals for one (metric, alpha): A/A false rollbacks, time ratio at 2x, what the threshold gate saw."""
    by_size = {cell["regression_margins"]: cell["gates"] for cell in cells}
    aa = by_size[0.0]["sequential"]
    median_2x = by_size[2.0]["sequential"]["median_hours_to_rollback_all_runs"]
    ratio = None if median_2x is None else median_2x / plan["fixed_hours"]
    return {
        "metric": metric.name,
        "alpha": alpha,
        "false_rollback": {
            name: {"share": gate["rolled_back"], "ci95": gate["rolled_back_ci95"]}
            for name, gate in by_size[0.0].items()
        },
        "false_rollback_at_most_alpha": aa["rolled_back"] <= alpha,
        "false_rollback_ci_lower_at_most_alpha": aa["rolled_back_ci95"][0] <= alpha,
        "power_at_margin_by_plan": {name: gate["rolled_back_by_plan"] for name, gate in by_size[1.0].items()},
        "rollback_time_ratio_at_2x_margin": ratio,
        "rollback_time_ratio_goal": RATIO_GOAL,
        "rollback_time_ratio_met": ratio is not None and ratio <= RATIO_GOAL,
        "detection_by_size": {
            str(size): {name: gate["rolled_back"] for name, gate in gates.items()} for size, gates in by_size.items()
        },
    }


def table(results: dict[str, Any]) -> list[str]:
    """Return the printed report: one table per (metric, alpha), then the goals."""
    lines = []
    plans = {(p["metric"], p["alpha"]): p for p in results["plans"]}
    header = (
        f"{'Δ/margin':>8} {'gate':<14} {'rolled back':>11} {'by plan':>8} {'promoted':>8} "
        f"{'med h→decision':>14} {'med h→rollback':>14} {'blast dev-h (mean)':>18}"
    )
    for cell in results["cells"]:
        key = (cell["metric"], cell["alpha"])
        if cell["regression_margins"] == 0.0:
            p = plans[key]
            lines += [
                "",
                (
                    f"== {cell['metric']}, alpha {cell['alpha']}: sequential plan {p['sequential_devices']} devices "
                    f"({p['sequential_hours']:.2f} h), fixed horizon {p['fixed_devices']} ({p['fixed_hours']:.2f} h), "
                    f"horizon {p['horizon_devices']}, {p['canary_devices']} canaries, look every "
                    f"{p['look_every_devices']} devices"
                ),
                header,
            ]
        for name, g in cell["gates"].items():
            to_rb = g["median_hours_to_rollback"]
            blast = g["blast_device_hours_mean"]
            lines.append(
                f"{cell['regression_margins']:>8g} {name:<14} {g['rolled_back']:>11.2%} "
                f"{g['rolled_back_by_plan']:>8.2%} {g['promoted']:>8.2%} "
                f"{g['median_hours_to_decision']:>14.2f} {'—' if to_rb is None else f'{to_rb:.2f}':>14} "
                f"{'— (A/A)' if blast is None else f'{blast:,.0f}':>18}"
            )
    lines.append("")
    for s in results["summary"]:
        fr = s["false_rollback"]
        seq, naive = fr["sequential"], fr["naive_peeking"]
        ratio = s["rollback_time_ratio_at_2x_margin"]
        within = "<=" if s["false_rollback_at_most_alpha"] else ">"
        lines.append(
            f"{s['metric']}, alpha {s['alpha']}: A/A false rollbacks ours {seq['share']:.2%} "
            f"[{seq['ci95'][0]:.2%}, {seq['ci95'][1]:.2%}] ({within} alpha), "
            f"fixed horizon {fr['fixed_horizon']['share']:.2%}, naive peeking {naive['share']:.2%}, "
            f"threshold {fr['threshold']['share']:.2%}; median time to roll back at 2x margin, ours / fixed horizon = "
            f"{'n/a' if ratio is None else f'{ratio:.3f}'} (goal <= {RATIO_GOAL}: "
            f"{'met' if s['rollback_time_ratio_met'] else 'NOT met'})"
        )
        power = s["power_at_margin_by_plan"]
        lines.append(
            f"  at the margin, rolled back within the planned duration: ours {power['sequential']:.2%} "
            f"(plan {POWER:.0%}), fixed horizon {power['fixed_horizon']:.2%}"
        )
        if s["metric"] == "confidence":
            seen = ", ".join(
                f"{float(size):g}x {d['threshold']:.2%} (ours {d['sequential']:.2%})"
                for size, d in s["detection_by_size"].items()
            )
            lines.append(f"  threshold gate on the silent regression, rolled back: {seen}")
    return lines


def run(options: Options) -> dict[str, Any]:
    """Run every cell and return the results."""
    results: dict[str, Any] = {
        "benchmark": "gates",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items() if k != "out"}
        | {"regressions_in_margins": list(REGRESSIONS), "power": POWER, "threshold_margin": ERRORS_MARGIN},
        "metrics": [
            {
                "name": m.name,
                "description": m.description,
                "margin": m.margin,
                "direction": m.direction,
                "devices": asdict(m.devices),
                "threshold_watches": asdict(ERRORS) if m.silent else "the metric itself",
            }
            for m in METRICS
        ],
        "plans": [],
        "cells": [],
        "summary": [],
    }
    started = time.perf_counter()
    for i, metric in enumerate(METRICS):
        for j, alpha in enumerate(options.alphas):
            plan = plan_metric(metric, alpha, options, np.random.default_rng([options.seed, i, j, 0]))
            results["plans"].append({"metric": metric.name, "alpha": alpha} | plan)
            cells = [
                run_cell(metric, alpha=alpha, size=size, plan=plan, options=options, seed=(options.seed, i, j, 1))
                for size in REGRESSIONS
            ]
            results["cells"] += cells
            results["summary"].append(summary_for(metric, alpha, plan, cells))
            print(f"[{metric.name}, alpha {alpha}] {sum(c['seconds'] for c in cells):.1f} s", file=sys.stderr)
    results["elapsed_s"] = round(time.perf_counter() - started, 2)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def parse_options(argv: Sequence[str] | None) -> Options:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2000, help="simulated rollouts per cell (>= 1,000 for claims)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--holdout", type=float, default=0.2, help="share of compared devices kept on the old model")
    parser.add_argument("--arrival-rate", type=float, default=200.0, help="compared devices completing exposure/hour")
    parser.add_argument("--look-minutes", type=float, default=10.0, help="minutes between reconciler looks")
    parser.add_argument("--threshold-min-canaries", type=int, default=200, help="the threshold gate's minimum count")
    parser.add_argument("--batch-runs", type=int, default=256, help="runs simulated together (memory)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")
    return Options(
        runs=args.runs,
        seed=args.seed,
        alphas=tuple(args.alphas),
        holdout=args.holdout,
        arrival_rate_per_hour=args.arrival_rate,
        look_minutes=args.look_minutes,
        threshold_min_canaries=args.threshold_min_canaries,
        batch_runs=args.batch_runs,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables and write the JSON."""
    options = parse_options(argv)
    results = run(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for line in table(results):
        print(line)
    print(f"\n{options.runs} runs per cell, {results['elapsed_s']} s; results written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
