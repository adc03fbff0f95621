"""The HTML report of a run: inline SVG charts (no plotting library) and the decisions with their numbers.

Charts: true vs estimated accuracy per version over fleet time (true from the
devices' ground truth, estimated from the label-free mean top-1 confidence the
gates use), the share of drifting devices, and how many devices run each version
with every rollout decision marked. Every number is read from the run.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from modelfleet.sim._fleet import T0, Round
from modelfleet.sim._run import Outcome

__all__ = ["decision_lines", "write_report"]

_W, _H = 880, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 150, 16, 34
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True, slots=True)
class _Series:
    label: str
    color: str
    points: list[tuple[float, float]]
    dashed: bool = False


def _minutes(at: datetime | str) -> float:
    moment = datetime.fromisoformat(at) if isinstance(at, str) else at
    return (moment - T0).total_seconds() / 60.0


def _chart(
    title: str,
    series: Sequence[_Series],
    *,
    x_max: float,
    y_range: tuple[float, float],
    y_format: str = "{:.2f}",
    markers: Sequence[tuple[float, str]] = (),
) -> str:
    y_low, y_high = y_range
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + plot_w * (x / x_max if x_max else 0.0)

    def sy(y: float) -> float:
        span = (y_high - y_low) or 1.0
        return _TOP + plot_h * (1 - (min(max(y, y_low), y_high) - y_low) / span)

    parts = [f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>')
    for k in range(5):
        y = y_low + (y_high - y_low) * k / 4
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{_LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="11">{y_format.format(y)}</text>'
        )
    step = max(15, int(x_max / 8 / 15 + 1) * 15)
    parts.extend(
        f'<text x="{sx(tick):.1f}" y="{_H - 14}" text-anchor="middle" font-size="11">'
        f"{tick // 60}:{tick % 60:02d}</text>"
        for tick in range(0, int(x_max) + 1, step)
    )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 1}" text-anchor="middle" font-size="11">fleet time (h:mm)</text>'
    )
    for index, (at, label) in enumerate(markers):
        mx, my = sx(at), _TOP + 12 + 12 * (index % 3)
        parts.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" stroke="#999" stroke-dasharray="3,3"/>'
        )
        parts.append(f'<text x="{mx + 3:.1f}" y="{my}" font-size="10" fill="#555">{html.escape(label)}</text>')
    for index, line in enumerate(series):
        if not line.points:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line.points)
        dash = ' stroke-dasharray="6,4"' if line.dashed else ""
        parts.append(f'<polyline fill="none" stroke="{line.color}" stroke-width="2"{dash} points="{path}"/>')
        ly = _TOP + 14 + 16 * index
        parts.append(
            f'<line x1="{_W - _RIGHT + 10}" x2="{_W - _RIGHT + 34}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{line.color}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{_W - _RIGHT + 38}" y="{ly}" font-size="11">{html.escape(line.label)}</text>')
    parts.append("</svg>")
    return f"<h2>{html.escape(title)}</h2>\n" + "".join(parts)


def _versions(rounds: Sequence[Round]) -> list[str]:
    seen: list[str] = []
    for record in rounds:
        for version in [*record.running, *record.versions]:
            if version != "none" and version not in seen:
                seen.append(version)
    return seen


def _markers(outcome: Outcome) -> list[tuple[float, str]]:
    marks = [
        (_minutes(decision["at"]), f"{version} {decision['event']}")
        for version, rollout in outcome.rollouts.items()
        for decision in rollout["decisions"]
    ]
    return sorted(marks)


def decision_lines(rollout: dict[str, Any]) -> list[str]:
    """Each decision of a rollout in words, with the gate numbers behind it."""
    lines = []
    for decision in rollout["decisions"]:
        at = datetime.fromisoformat(decision["at"]).strftime("%H:%M")
        head = (
            f"{at}  {decision['event']}: {decision['from_state']} -> {decision['to_state']} (stage {decision['stage']})"
        )
        lines.append(f"{head} - {decision['reason']}")
        evaluation = decision.get("detail", {}).get("evaluation")
        if not evaluation:
            continue
        lines.append(
            f"        {evaluation['treated_devices']} treated vs {evaluation['holdout_devices']} holdout devices"
        )
        lines.extend("        " + _gate_line(gate) for gate in evaluation["gates"])
    return lines


def _fmt(value: object, pattern: str = "{:+.4f}") -> str:
    return pattern.format(value) if isinstance(value, int | float) else "n/a"


def _gate_line(gate: dict[str, Any]) -> str:
    return (
        f"{gate['metric']}: treated {_fmt(gate['treated_mean'], '{:.4f}')} vs holdout "
        f"{_fmt(gate['holdout_mean'], '{:.4f}')}, difference {_fmt(gate['estimate'])} "
        f"[{_fmt(gate['lower'])}, {_fmt(gate['upper'])}], margin {gate['margin']}, "
        f"p(degradation) {_fmt(gate['degradation_p_value'], '{:.2g}')}, "
        f"p(inferiority) {_fmt(gate['inferiority_p_value'], '{:.2g}')} -> {gate['decision']}"
    )


def write_report(outcome: Outcome, path: Path, *, title: str, intro: str) -> Path:
    """Write the HTML report of ``outcome`` to ``path``."""
    rounds = outcome.rounds
    x_max = max((_minutes(r.at) for r in rounds), default=60.0) or 60.0
    versions = _versions(rounds)
    colors = {version: _COLORS[i % len(_COLORS)] for i, version in enumerate(versions)}
    accuracy = []
    for version in versions:
        true_pts = [
            (_minutes(r.at), v.true_accuracy)
            for r in rounds
            if (v := r.versions.get(version)) and v.true_accuracy is not None
        ]
        est_pts = [
            (_minutes(r.at), v.estimated_accuracy)
            for r in rounds
            if (v := r.versions.get(version)) and v.estimated_accuracy is not None
        ]
        accuracy.append(_Series(f"{version} true", colors[version], true_pts))
        accuracy.append(_Series(f"{version} estimated", colors[version], est_pts, dashed=True))
    drift = [
        _Series(
            "drifting share (stable version)",
            "#444",
            [(_minutes(r.at), r.drift_share) for r in rounds if r.drift_share is not None],
        )
    ]
    running = [
        _Series(version, colors[version], [(_minutes(r.at), float(r.running.get(version, 0))) for r in rounds])
        for version in versions
    ]
    markers = _markers(outcome)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(intro)}</p>",
        (
            "<p>Every number on this page was computed by this run: "
            f"{outcome.devices} simulated devices (real agents over real HTTP), {len(rounds)} telemetry windows.</p>"
        ),
        _chart(
            "Accuracy per version: true (device ground truth, solid) vs estimated (mean top-1 confidence, dashed)",
            accuracy,
            x_max=x_max,
            y_range=(0.2, 1.0),
            markers=markers,
        ),
        _chart("Share of devices drifting (drift monitor, PSI over K windows)", drift, x_max=x_max, y_range=(0, 1)),
        _chart(
            "Devices running each version, with rollout decisions",
            running,
            x_max=x_max,
            y_range=(0, float(outcome.devices)),
            y_format="{:.0f}",
            markers=markers,
        ),
        "<h2>Decisions and the numbers behind them</h2>",
    ]
    for version, rollout in outcome.rollouts.items():
        body.append(
            f"<h3>{html.escape(version)}: rollout {html.escape(rollout['id'])}, {html.escape(rollout['state'])}</h3>"
        )
        body.append("<pre>" + html.escape("\n".join(decision_lines(rollout))) + "</pre>")
    body.append("<h2>Timeline</h2><pre>")
    body.append(html.escape("\n".join(f"{at.strftime('%H:%M')}  {text}" for at, text in outcome.notes)))
    body.append("</pre><h2>Checks</h2><ul>")
    for name, held in outcome.expectations.items():
        body.append(f"<li>{'held' if held else 'FAILED'}: {html.escape(name)}</li>")
    body.append(
        f"<li>summaries acknowledged to devices {outcome.summaries_sent}, "
        f"stored by the server {outcome.summaries_stored}</li>"
    )
    body.append("</ul>")
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>'
        + html.escape(title)
        + "</title><style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
