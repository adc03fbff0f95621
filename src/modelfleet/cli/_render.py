"""Readable renderings of a manifest for ``bundle inspect`` and the demo."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from modelfleet.bundle import BundleHeader, Histogram, Manifest

__all__ = ["fmt_number", "human_bytes", "print_json", "render_header", "sparkline"]

_BARS = " ▁▂▃▄▅▆▇█"


def print_json(document: object) -> None:
    """Print a JSON answer readably (sorted keys; times and other objects as text)."""
    typer.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def fmt_number(value: object, digits: int = 4) -> str:
    """A number for a table cell: ``-`` for none, floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def human_bytes(size: int) -> str:
    """Render a byte count as ``12.3 MB`` (decimal units, as disks are sold)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def sparkline(counts: Sequence[int]) -> str:
    """Draw counts as one bar character per bin, scaled to the largest bin."""
    peak = max(counts, default=0)
    if peak == 0:
        return _BARS[0] * len(counts)
    top = len(_BARS) - 1
    return "".join(_BARS[round(c / peak * top)] if c else _BARS[0] for c in counts)


def _edge(value: float) -> str:
    return f"{value:.3g}"


def _histogram_line(histogram: Histogram) -> str:
    interior = histogram.edges[1:-1] if len(histogram.edges) > 2 else histogram.edges
    span = f"{_edge(interior[0])} .. {_edge(interior[-1])}" if interior else ""
    return f"[{sparkline(histogram.counts)}] {span}"


def _kv_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def _identity(header: BundleHeader) -> Table:
    m = header.manifest
    signers = ", ".join(s.keyid[:16] for s in header.envelope.signatures) or "none"
    return _kv_table(
        f"{m.name} {m.version}",
        [
            ("release", str(m.release)),
            ("parent", m.parent or "-"),
            ("created", m.created),
            ("model", f"{m.model.file} ({m.model.format}, opset {m.model.opset or '-'})"),
            ("files", ", ".join(f"{f.path} {human_bytes(f.size)}" for f in m.files)),
            ("signatures", f"{len(header.envelope.signatures)} ({signers}); not verified here, use `bundle verify`"),
        ],
    )


def _contract(m: Manifest) -> Table:
    c = m.contract
    q = c.quantization
    hw = c.hardware
    prep = f"{c.preprocessing.id} v{c.preprocessing.version}" if c.preprocessing else "-"
    hardware = [
        f"arch {'/'.join(hw.arch) or 'any'}",
        f"types {'/'.join(hw.device_types) or 'any'}",
        f"RAM >= {human_bytes(hw.min_ram_bytes)}",
        f"disk >= {human_bytes(hw.min_disk_bytes)}",
    ]
    hardware += [f"tag {k}={v}" for k, v in sorted(hw.required_tags.items())]
    if hw.accelerator:
        hardware.append(f"accelerator {hw.accelerator}")
    return _kv_table(
        "contract",
        [
            ("inputs", "; ".join(t.describe() for t in c.inputs)),
            ("outputs", "; ".join(t.describe() for t in c.outputs)),
            ("head", f"{c.head.n_classes}-class {c.head.kind}, {c.head.scores} in {c.head.scores_output!r}"),
            ("quantization", q.scheme + (f" ({len(q.tensors)} tensors, per-channel)" if q.per_channel else "")),
            ("preprocessing", prep),
            ("labels", ", ".join(c.labels) if c.labels else "-"),
            ("runtime", f"{c.runtime.name} {c.runtime.specifier}"),
            ("hardware", ", ".join(hardware)),
        ],
    )


def _behaviour(m: Manifest) -> Table:
    b = m.behaviour
    latency = f"{b.budgets.max_latency_ms:g} ms" if b.budgets.max_latency_ms is not None else "-"
    ram = human_bytes(b.budgets.max_ram_bytes) if b.budgets.max_ram_bytes is not None else "-"
    calibration = "-"
    if b.calibration:
        calibration = f"{b.calibration.method} {dict(sorted(b.calibration.params.items()))}"
    return _kv_table(
        "behaviour",
        [
            ("thresholds", ", ".join(f"{k}={v:g}" for k, v in sorted(b.thresholds.items())) or "-"),
            ("calibration", calibration),
            ("budgets", f"latency <= {latency}, RAM <= {ram}"),
            ("fallback class", str(b.fallback_class) if b.fallback_class is not None else "-"),
        ],
    )


def _evidence(m: Manifest) -> Table:
    e = m.evidence
    p = e.provenance
    parity = "-"
    if e.parity is not None:
        parity = f"{e.parity.agreement:.4f} top-1 agreement with float over {e.parity.n} (>= {e.parity.min_required:g})"
    provenance = [f"{k} {v}" for k, v in p.model_dump().items() if v is not None]
    return _kv_table(
        "evidence",
        [
            ("metrics", ", ".join(f"{k}={v:.4g}" for k, v in sorted(e.metrics.items())) or "-"),
            ("parity", parity),
            ("golden", f"{e.golden.count} vectors in {e.golden.file}, atol {e.golden.atol:g}, rtol {e.golden.rtol:g}"),
            ("provenance", ", ".join(provenance)),
        ],
    )


def _references(m: Manifest, max_features: int | None) -> Table:
    refs = m.evidence.references
    shown = refs.features if max_features is None else refs.features[:max_features]
    table = Table(title=f"reference histograms (n={refs.n})", title_justify="left", box=None, pad_edge=False)
    table.add_column("feature", style="bold", no_wrap=True)
    table.add_column("bins (quantile edges, open ends)", no_wrap=True)
    table.add_row("confidence", _histogram_line(refs.confidence))
    for feature in shown:
        table.add_row(f"{feature.input}[{feature.index}]", _histogram_line(feature))
    hidden = len(refs.features) - len(shown)
    if hidden:
        table.add_row(Text(f"... {hidden} more", style="dim"), Text("use --all-features", style="dim"))
    return table


def render_header(header: BundleHeader, *, max_features: int | None = 12) -> RenderableType:
    """Build the ``bundle inspect`` view of a bundle's header."""
    m = header.manifest
    return Group(
        _identity(header),
        Text(),
        _contract(m),
        Text(),
        _behaviour(m),
        Text(),
        _evidence(m),
        Text(),
        _references(m, max_features),
    )
