"""Telemetry shared by device and server: summary and event schemas, input features, the streaming summarizer.

The summarizer and feature reader (numpy) load on first use (PEP 562): the agent
loop and the server handle schemas only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfleet._lazy import lazy_exports
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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
