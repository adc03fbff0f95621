"""Telemetry shared by device and server: summary and event schemas, input features, the streaming summarizer."""

from __future__ import annotations

from modelfleet.telemetry._features import feature_values
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
from modelfleet.telemetry._summarizer import ShadowComparison, Summarizer, SummaryLayout

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
