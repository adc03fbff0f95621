"""The update lifecycle of one model on a device: one declared ``(state, event) -> state`` table.

The decision, the table, the journal and the crash points are in ADR 0005
(``docs/adr/0005-agent-update-journal.md``).

Mender's state table is the model: every step of an install, commit or rollback is a
state, every outcome of a step is an event, and nothing moves except through
:data:`TRANSITIONS`. The table is pure; :mod:`modelfleet.agent._install` does the I/O
and persists the state in the journal before each step. State names are the
``InstallState`` names of the wire protocol.

Only bad data, a failed health check or an incompatibility fail a version. A transport
failure while downloading (a stall, a reset, a 5xx, a full disk) is ``DOWNLOAD_DEFERRED``:
the install stays in ``downloading`` and is tried again, with exponential backoff and
full jitter, at a later check-in; the partial file is kept for a ``Range`` resume.
While a download waits like that, nothing has been touched, so a new assignment may
replace it (``(downloading, assigned)``).

``LOOP`` is raised by the engine when a state was entered more often than allowed
across restarts. Before the switch that means ``failed`` (the running model was never
touched); after it the device first restores the previous model (``rolling_back``),
because a model that keeps killing the process must not stay ``current``.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType

__all__ = ["TERMINAL", "TRANSITIONS", "CrashPoint", "UpdateEvent", "UpdateState", "next_state"]


class UpdateState(StrEnum):
    """Where an install stands; the values are the protocol's ``InstallState`` names."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    SWITCHING = "switching"
    TRIAL = "trial"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class UpdateEvent(StrEnum):
    """The outcome of one step, which picks the next state."""

    ASSIGNED = "assigned"
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_DEFERRED = "download_deferred"
    INCOMPATIBLE = "incompatible"
    REFUSED = "refused"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    ACTIVATE = "activate"
    SWITCHED = "switched"
    SWITCH_FAILED = "switch_failed"
    HEALTH_PASSED = "health_passed"
    HEALTH_FAILED = "health_failed"
    RESTORED = "restored"
    RESTORE_FAILED = "restore_failed"
    LOOP = "loop"


class CrashPoint(StrEnum):
    """Every step at which ``MODELFLEET_CRASH_AT`` can SIGKILL the agent (crash tests only)."""

    AFTER_ASSIGN = "after_assign"
    MID_DOWNLOAD = "mid_download"
    AFTER_DOWNLOAD = "after_download"
    AFTER_VERIFY = "after_verify"
    MID_PUBLISH = "mid_publish"
    AFTER_PUBLISH = "after_publish"
    BEFORE_SWITCH = "before_switch"
    BETWEEN_SYMLINKS = "between_symlinks"
    AFTER_SWITCH = "after_switch"
    MID_TRIAL = "mid_trial"
    BEFORE_COMMIT = "before_commit"
    AFTER_COMMIT = "after_commit"
    BEFORE_ROLLBACK = "before_rollback"
    MID_ROLLBACK = "mid_rollback"
    AFTER_ROLLBACK = "after_rollback"
    MID_GC = "mid_gc"


_S, _E = UpdateState, UpdateEvent

TERMINAL = frozenset({_S.IDLE, _S.COMMITTED, _S.ROLLED_BACK, _S.FAILED})
"""States with no step to run; a new assignment leaves them."""

TRANSITIONS: MappingProxyType[tuple[UpdateState, UpdateEvent], UpdateState] = MappingProxyType(
    {
        **{(state, _E.ASSIGNED): _S.DOWNLOADING for state in TERMINAL},
        (_S.DOWNLOADING, _E.DOWNLOADED): _S.VERIFYING,
        (_S.DOWNLOADING, _E.DOWNLOAD_FAILED): _S.FAILED,
        (_S.DOWNLOADING, _E.DOWNLOAD_DEFERRED): _S.DOWNLOADING,
        (_S.DOWNLOADING, _E.ASSIGNED): _S.DOWNLOADING,
        (_S.DOWNLOADING, _E.INCOMPATIBLE): _S.FAILED,
        (_S.DOWNLOADING, _E.REFUSED): _S.FAILED,
        (_S.DOWNLOADING, _E.VERIFY_FAILED): _S.FAILED,
        (_S.DOWNLOADING, _E.LOOP): _S.FAILED,
        (_S.VERIFYING, _E.VERIFIED): _S.STAGED,
        (_S.VERIFYING, _E.VERIFY_FAILED): _S.FAILED,
        (_S.VERIFYING, _E.REFUSED): _S.FAILED,
        (_S.VERIFYING, _E.LOOP): _S.FAILED,
        (_S.STAGED, _E.ACTIVATE): _S.SWITCHING,
        (_S.STAGED, _E.INCOMPATIBLE): _S.FAILED,
        (_S.STAGED, _E.LOOP): _S.FAILED,
        (_S.SWITCHING, _E.SWITCHED): _S.TRIAL,
        (_S.SWITCHING, _E.SWITCH_FAILED): _S.ROLLING_BACK,
        (_S.SWITCHING, _E.LOOP): _S.ROLLING_BACK,
        (_S.TRIAL, _E.HEALTH_PASSED): _S.COMMITTED,
        (_S.TRIAL, _E.HEALTH_FAILED): _S.ROLLING_BACK,
        (_S.TRIAL, _E.LOOP): _S.ROLLING_BACK,
        (_S.ROLLING_BACK, _E.RESTORED): _S.ROLLED_BACK,
        (_S.ROLLING_BACK, _E.RESTORE_FAILED): _S.FAILED,
        (_S.ROLLING_BACK, _E.LOOP): _S.FAILED,
    }
)
"""The whole lifecycle: ``idle -> downloading -> verifying -> staged -> switching -> trial
-> committed | rolling_back -> rolled_back | failed``."""


def next_state(state: UpdateState, event: UpdateEvent) -> UpdateState:
    """Look up the transition for ``event`` in ``state``.

    Raises:
        RuntimeError: the table has no such transition (a bug in the caller, never bad input).
    """
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        msg = f"no transition from {state.value!r} on {event.value!r}"
        raise RuntimeError(msg) from None
