"""Prometheus metrics, one registry per app (the request gate times and counts requests).

Requests are labelled by route template (``/v1/artifacts/{sha256}``), never by
raw path, so label cardinality stays bounded; unmatched paths share one label.
"""

from __future__ import annotations

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The server's instruments, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "modelfleet_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelfleet_http_request_duration_seconds",
            "Time to answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.checkins = Counter("modelfleet_checkins", "Device check-ins answered.", registry=registry)
        self.not_modified = Counter("modelfleet_checkins_not_modified", "Check-ins answered 304.", registry=registry)
        self.reports_stored = Counter(
            "modelfleet_device_reports_stored", "Check-ins whose changed inventory was written.", registry=registry
        )
        self.summaries = Counter(
            "modelfleet_telemetry_summaries", "Telemetry summaries received.", ["result"], registry=registry
        )
        self.events = Counter("modelfleet_device_events", "Device events received.", ["result"], registry=registry)
        self.uploads = Counter("modelfleet_bundle_uploads", "Bundle uploads by outcome.", ["result"], registry=registry)
        self.last_seen_flushed = Counter(
            "modelfleet_last_seen_flushed", "Device last-seen times written in batches.", registry=registry
        )

    def render(self) -> Response:
        """The text exposition of every metric."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
