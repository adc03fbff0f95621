"""Checks on device batches that the shared wire schemas do not make yet, so storage never fails on them.

``Event.detail`` admits any float and PostgreSQL refuses NaN in JSON; a
timestamp near year 1 or 9999 with an offset has no UTC equivalent; summary
counts are unbounded but stored as 64-bit integers. These are bad input, so
they are 422s naming the field, not 500s from the database.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from modelfleet.protocol import EventBatch, TelemetryBatch
from modelfleet.server._errors import ApiError

__all__ = ["MAX_INT64", "check_events", "check_summaries", "storable_time"]

MAX_INT64 = 2**63 - 1
_COUNTS = ("n", "errors", "fallbacks", "timeouts", "n_labelled", "n_correct")


def storable_time(moment: datetime | None, field: str) -> None:
    """Refuse a time that has no UTC equivalent (the database stores UTC)."""
    if moment is None:
        return
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(422, "invalid", "the time is out of range once converted to UTC", field=field) from None


def check_summaries(batch: TelemetryBatch) -> None:
    """Refuse summaries the store could not hold: unrepresentable times, counts beyond 64 bits."""
    for index, summary in enumerate(batch.summaries):
        storable_time(summary.window_start, f"summaries.{index}.window_start")
        for name in _COUNTS:
            if getattr(summary, name) > MAX_INT64:
                raise ApiError(422, "invalid", f"must be at most {MAX_INT64}", field=f"summaries.{index}.{name}")


def check_events(batch: EventBatch) -> None:
    """Refuse events the store could not hold: unrepresentable times, non-finite detail numbers."""
    for index, event in enumerate(batch.events):
        storable_time(event.at, f"events.{index}.at")
        for key, value in event.detail.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ApiError(422, "invalid", "must be a finite number", field=f"events.{index}.detail.{key}")
