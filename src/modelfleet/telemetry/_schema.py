"""The telemetry summary and event schemas shared by device and server.

A :class:`Summary` describes one window of one (model, version, role) on one
device: counts, a latency histogram on fixed log bins, a confidence histogram
and a per-feature input histogram on the bundle's own reference edges, predicted
class counts, optional labelled outcomes and shadow agreement. No raw input
leaves the device. Summary and event ids are chosen by the device and make
delivery idempotent: the server stores each id once however often it arrives.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "LATENCY_EDGES_MS",
    "MAX_BINS",
    "MAX_FEATURES",
    "Event",
    "EventKind",
    "Role",
    "ShadowStats",
    "Summary",
    "latency_bin_edges",
]

MAX_FEATURES = 4096
MAX_BINS = 256
_ID = r"^[A-Za-z0-9_-]{8,64}$"
_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_SEMVER_LOOSE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.+-]*)?$", re.ASCII)


def latency_bin_edges(low_ms: float = 0.01, high_ms: float = 100_000.0, per_decade: int = 8) -> tuple[float, ...]:
    """Log-spaced latency edges in ms; bin ``i`` covers ``[edges[i], edges[i+1])``, open at both ends."""
    decades = round(math.log10(high_ms / low_ms))
    inner = tuple(low_ms * 10 ** (i / per_decade) for i in range(decades * per_decade + 1))
    return (0.0, *inner, math.inf)


LATENCY_EDGES_MS = latency_bin_edges()
"""Fixed for the wire format: 0, 0.01 ms .. 100 s at 8 bins per decade, then +inf (58 bins)."""

Role = Literal["active", "shadow", "time_slice"]
EventKind = Literal[
    "download_failed",
    "incompatible",
    "verify_failed",
    "installed",
    "health_passed",
    "health_failed",
    "rolled_back",
    "committed",
    "fallback",
    "worker_restarted",
    "crash_loop",
    "refused",
    "install_failed",
    "rollback_failed",
]

Count = Annotated[int, Field(ge=0, le=2**63 - 1)]  # fits a signed 64-bit column


def _finite(value: float) -> float:
    if not math.isfinite(value):
        msg = "must be a finite number"
        raise ValueError(msg)
    return value


Finite = Annotated[float, AfterValidator(_finite)]


def _storable(value: str | float | None) -> str | float | None:
    """Refuse what a database column cannot hold: NaN/inf, integers beyond 64 bits."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        msg = "integers must fit in 64 bits"
        raise ValueError(msg)
    return value


DetailValue = Annotated[str | int | float | bool | None, AfterValidator(_storable)]


def _semver(value: str) -> str:
    if not _SEMVER_LOOSE.match(value):
        msg = f"{value!r} is not a semantic version"
        raise ValueError(msg)
    return value


Version = Annotated[str, Field(max_length=128), AfterValidator(_semver)]


class _Wire(BaseModel):
    # built on first use: an idle agent imports the schema and never needs it (3 MB)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ShadowStats(_Wire):
    """Shadow mode: how often the candidate agreed with the active model on the same inputs."""

    active_version: Version
    n_compared: Count
    n_agree: Count
    active_confidence_sum: Finite = Field(ge=0)
    n_labelled: Count = 0
    active_correct: Count = 0
    candidate_correct: Count = 0
    only_active_correct: Count = 0
    only_candidate_correct: Count = 0

    @model_validator(mode="after")
    def _bounded(self) -> ShadowStats:
        if self.n_agree > self.n_compared:
            msg = f"n_agree {self.n_agree} exceeds n_compared {self.n_compared}"
            raise ValueError(msg)
        if max(self.active_correct, self.candidate_correct) > self.n_labelled:
            msg = "correct counts exceed n_labelled"
            raise ValueError(msg)
        return self


class Summary(_Wire):
    """One telemetry window of one (model, version, role) on one device."""

    id: str = Field(pattern=_ID)
    model: str = Field(pattern=_NAME)
    version: Version
    role: Role = "active"
    window_start: datetime
    window_seconds: int = Field(ge=1, le=86_400)
    n: Count
    errors: Count = 0
    fallbacks: Count = 0
    timeouts: Count = 0
    latency_counts: tuple[Count, ...] = Field(max_length=MAX_BINS)
    latency_sum_ms: Finite = Field(ge=0)
    confidence_counts: tuple[Count, ...] = Field(max_length=MAX_BINS)
    confidence_sum: Finite = Field(ge=0)
    confidence_sum_sq: Finite = Field(ge=0)
    predicted_counts: tuple[Count, ...] = Field(max_length=4096)
    feature_counts: tuple[tuple[Count, ...], ...] = Field(max_length=MAX_FEATURES)
    n_labelled: Count = 0
    n_correct: Count = 0
    shadow: ShadowStats | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Summary:
        if self.window_start.tzinfo is None:
            msg = "window_start must carry a timezone"
            raise ValueError(msg)
        if self.latency_counts and len(self.latency_counts) != len(LATENCY_EDGES_MS) - 1:
            msg = f"latency_counts needs {len(LATENCY_EDGES_MS) - 1} bins, got {len(self.latency_counts)}"
            raise ValueError(msg)
        for name in ("latency_counts", "confidence_counts", "predicted_counts"):
            total = sum(getattr(self, name))
            if total > self.n:
                msg = f"{name} add up to {total}, more than n={self.n}"
                raise ValueError(msg)
        if self.n_correct > self.n_labelled or self.n_labelled > self.n:
            msg = "need n_correct <= n_labelled <= n"
            raise ValueError(msg)
        if self.errors + self.timeouts > self.n:
            msg = "errors + timeouts exceed n"
            raise ValueError(msg)
        return self

    @property
    def mean_confidence(self) -> float | None:
        """Mean top-1 confidence over scored inferences, if any were scored."""
        scored = sum(self.confidence_counts)
        return self.confidence_sum / scored if scored else None


class Event(_Wire):
    """Something that happened on a device: install, health check, rollback, refusal."""

    id: str = Field(pattern=_ID)
    kind: EventKind
    at: datetime
    model: str | None = Field(default=None, pattern=_NAME)
    version: Version | None = None
    reason: str | None = Field(default=None, max_length=2048)
    detail: dict[str, DetailValue] = Field(default_factory=dict, max_length=64)
