"""Telemetry shared by device and server: summary and event schemas, input features, the streaming summarizer.

The summarizer and feature reader (numpy) load on first use (PEP 562): the agent
loop and the server handle schemas only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelfleet.telemetry._schema import (
    LATENCY_EDGES_MS,
    MAX_BINS,
    MAX_FEATURES,
    Event,
    EventKind,
    Role,
    ShadowStats,
    Summary,
    latency_bin_edges,
)

if TYPE_CHECKING:
    from modelfleet.telemetry._features import feature_values
    from modelfleet.telemetry._summarizer import ShadowComparison, Summarizer, SummaryLayout

_LAZY = {
    "ShadowComparison": "_summarizer",
    "Summarizer": "_summarizer",
    "SummaryLayout": "_summarizer",
    "feature_values": "_features",
}
"""Public names whose modules import numpy -> the private module that defines them."""

__all__ = [
    "LATENCY_EDGES_MS",
    "MAX_BINS",
    "MAX_FEATURES",
    "Event",
    "EventKind",
    "Role",
    "ShadowComparison",
    "ShadowStats",
    "Summarizer",
    "Summary",
    "SummaryLayout",
    "feature_values",
    "latency_bin_edges",
]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - any exported object
    """Import the module that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
