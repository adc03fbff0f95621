"""Events the runtime raises for the agent to send: fallbacks, worker restarts, crash loops."""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import threading
from collections.abc import Mapping

from modelfleet.clock import Clock
from modelfleet.telemetry import Event, EventKind

__all__ = ["EventLog"]

_MAX_REASON = 2048
_ID_HEX = 32

Detail = Mapping[str, str | int | float | bool | None]


class EventLog:
    """A bounded buffer of events; when full the oldest go first and are counted, never silently; thread-safe.

    Event ids are ``sha256(salt, sequence number)``: unique per log, deterministic for an injected salt.

    Args:
        clock: when events happen.
        capacity: events kept until collected.
        salt: bytes mixed into event ids; random when not given.
    """

    def __init__(self, clock: Clock, capacity: int, *, salt: bytes | None = None) -> None:
        self._clock = clock
        self._salt = os.urandom(16) if salt is None else salt
        self._events: collections.deque[Event] = collections.deque()
        self._capacity = capacity
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self.dropped = 0

    def record(self, kind: EventKind, *, model: str, version: str, reason: str, detail: Detail) -> Event:
        """Add an event and return it."""
        with self._lock:
            number = next(self._numbers)
            event = Event(
                id=hashlib.sha256(self._salt + b"event\x00" + str(number).encode()).hexdigest()[:_ID_HEX],
                kind=kind,
                at=self._clock.now(),
                model=model,
                version=version,
                reason=reason[:_MAX_REASON],
                detail=dict(detail),
            )
            if len(self._events) == self._capacity:
                self._events.popleft()
                self.dropped += 1
            self._events.append(event)
        return event

    def drain(self) -> list[Event]:
        """Take every buffered event, oldest first."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events
