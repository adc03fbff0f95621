"""The manual clock moves only when told, which is what makes tests and the simulator exact."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelfleet.clock import ManualClock, SystemClock, format_timestamp

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_manual_clock_advances_wall_and_monotonic_time_together():
    clock = ManualClock(START)
    clock.advance(90.5)
    assert clock.now() == START + timedelta(seconds=90.5)
    assert clock.monotonic() == 90.5


def test_manual_clock_refuses_to_go_backwards_or_start_naive():
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive value is the point


def test_system_clock_is_utc_and_monotonic_does_not_go_back():
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.now().tzinfo is not None
    assert clock.monotonic() >= first


def test_timestamps_are_rfc3339_utc_whatever_the_input_zone():
    eastern = START.astimezone(timezone(timedelta(hours=-5)))
    assert format_timestamp(eastern) == "2026-11-23T12:00:00Z"
