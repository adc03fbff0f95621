"""The device agent: runs installed models for applications and reports how they behave.

Applications call :class:`Predictor`; the agent collects its summaries and
events into an :class:`Outbox` and forwards them when the link is up.

Names load on first use (PEP 562), so ``import modelfleet.agent`` stays light: the
agent loop, which holds no model while idle, never loads ONNX Runtime or numpy
through this package, and an application pays only for what it uses. Modules:
``_daemon`` (the loop, config, state), ``_client`` (device API) over ``_http`` (the
HTTP client and its transports), ``_download``
(resumable bounded downloads), ``_install`` (the update engine over the table in
``_update``, journaled by ``_journal``), ``_slots`` (versions and symlinks),
``_health`` (the post-switch check), ``_predictor`` with ``_worker`` / ``_inline``
(inference), ``_modes`` (shadow and time slice), ``_candidate`` and ``_served`` (an experiment's candidate beside the
active version, and the Predictor on both), ``_contract`` (input checks),
``_events`` and ``_outbox`` (telemetry buffers), ``_identity`` (keys and
credential), ``_wake`` (MQTT wake-ups), ``_runtime`` (the runtime interface).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfleet._lazy import lazy_exports

if TYPE_CHECKING:
    from modelfleet.agent._candidate import CandidateRecord, Serving
    from modelfleet.agent._client import ClockSkewError, CredentialRejectedError, DeviceClient
    from modelfleet.agent._daemon import Agent, AgentConfig, AgentState, StepResult, agent_status
    from modelfleet.agent._download import Downloader, DownloadPolicy, FreeSpace, backoff_delay, disk_free
    from modelfleet.agent._health import HealthPolicy, HealthReport, LiveVerdict, LiveWatch, check_health
    from modelfleet.agent._http import (
        ClientTimeouts,
        ExchangeError,
        HttpClient,
        HttpTransport,
        MockTransport,
        Request,
        Response,
        Transport,
    )
    from modelfleet.agent._identity import CredentialFile, DeviceIdentity
    from modelfleet.agent._install import EventSink, InstallConfig, Installer, crash_checkpoint
    from modelfleet.agent._journal import FailedVersion, Journal, JournalFile, Origin, Target
    from modelfleet.agent._outbox import Outbox, OutboxCounts, OutboxItem
    from modelfleet.agent._predictor import InstalledVersion, Prediction, Predictor
    from modelfleet.agent._runtime import Isolation, OnnxRuntime, Runtime, RuntimeConfig
    from modelfleet.agent._served import ServedPredictor, open_served
    from modelfleet.agent._slots import Slot, SlotHandle, SlotStore
    from modelfleet.agent._update import TERMINAL, TRANSITIONS, CrashPoint, UpdateEvent, UpdateState, next_state
    from modelfleet.agent._wake import WakeListener

_EXPORTS = {
    "TERMINAL": "_update",
    "TRANSITIONS": "_update",
    "Agent": "_daemon",
    "AgentConfig": "_daemon",
    "AgentState": "_daemon",
    "CandidateRecord": "_candidate",
    "ClientTimeouts": "_http",
    "ClockSkewError": "_client",
    "CrashPoint": "_update",
    "CredentialFile": "_identity",
    "CredentialRejectedError": "_client",
    "DeviceClient": "_client",
    "DeviceIdentity": "_identity",
    "DownloadPolicy": "_download",
    "Downloader": "_download",
    "EventSink": "_install",
    "ExchangeError": "_http",
    "FailedVersion": "_journal",
    "FreeSpace": "_download",
    "HealthPolicy": "_health",
    "HealthReport": "_health",
    "HttpClient": "_http",
    "HttpTransport": "_http",
    "InstallConfig": "_install",
    "InstalledVersion": "_predictor",
    "Installer": "_install",
    "Isolation": "_runtime",
    "Journal": "_journal",
    "JournalFile": "_journal",
    "LiveVerdict": "_health",
    "LiveWatch": "_health",
    "MockTransport": "_http",
    "OnnxRuntime": "_runtime",
    "Origin": "_journal",
    "Outbox": "_outbox",
    "OutboxCounts": "_outbox",
    "OutboxItem": "_outbox",
    "Prediction": "_predictor",
    "Predictor": "_predictor",
    "Request": "_http",
    "Response": "_http",
    "Runtime": "_runtime",
    "RuntimeConfig": "_runtime",
    "Slot": "_slots",
    "SlotHandle": "_slots",
    "ServedPredictor": "_served",
    "Serving": "_candidate",
    "SlotStore": "_slots",
    "StepResult": "_daemon",
    "Target": "_journal",
    "Transport": "_http",
    "UpdateEvent": "_update",
    "UpdateState": "_update",
    "WakeListener": "_wake",
    "agent_status": "_daemon",
    "backoff_delay": "_download",
    "check_health": "_health",
    "crash_checkpoint": "_install",
    "disk_free": "_download",
    "next_state": "_update",
    "open_served": "_served",
}
"""Public name -> the private module that defines it."""

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Agent",
    "AgentConfig",
    "AgentState",
    "CandidateRecord",
    "ClientTimeouts",
    "ClockSkewError",
    "CrashPoint",
    "CredentialFile",
    "CredentialRejectedError",
    "DeviceClient",
    "DeviceIdentity",
    "DownloadPolicy",
    "Downloader",
    "EventSink",
    "ExchangeError",
    "FailedVersion",
    "FreeSpace",
    "HealthPolicy",
    "HealthReport",
    "HttpClient",
    "HttpTransport",
    "InstallConfig",
    "InstalledVersion",
    "Installer",
    "Isolation",
    "Journal",
    "JournalFile",
    "LiveVerdict",
    "LiveWatch",
    "MockTransport",
    "OnnxRuntime",
    "Origin",
    "Outbox",
    "OutboxCounts",
    "OutboxItem",
    "Prediction",
    "Predictor",
    "Request",
    "Response",
    "Runtime",
    "RuntimeConfig",
    "ServedPredictor",
    "Serving",
    "Slot",
    "SlotHandle",
    "SlotStore",
    "StepResult",
    "Target",
    "Transport",
    "UpdateEvent",
    "UpdateState",
    "WakeListener",
    "agent_status",
    "backoff_delay",
    "check_health",
    "crash_checkpoint",
    "disk_free",
    "next_state",
    "open_served",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
