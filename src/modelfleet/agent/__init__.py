"""The device agent: runs installed models for applications and reports how they behave.

Applications call :class:`Predictor`; the agent collects its summaries and
events into an :class:`Outbox` and forwards them when the link is up.
"""

from __future__ import annotations

from modelfleet.agent._client import ClientTimeouts, ClockSkewError, CredentialRejectedError, DeviceClient
from modelfleet.agent._daemon import Agent, AgentConfig, AgentState, StepResult, agent_status
from modelfleet.agent._download import Downloader, DownloadPolicy, FreeSpace, backoff_delay, disk_free
from modelfleet.agent._health import HealthPolicy, HealthReport, LiveVerdict, LiveWatch, check_health
from modelfleet.agent._identity import CredentialFile, DeviceIdentity
from modelfleet.agent._install import EventSink, InstallConfig, Installer, crash_checkpoint
from modelfleet.agent._journal import FailedVersion, Journal, JournalFile, Origin, Target
from modelfleet.agent._outbox import Outbox, OutboxCounts, OutboxItem
from modelfleet.agent._predictor import InstalledVersion, Prediction, Predictor
from modelfleet.agent._runtime import OnnxRuntime, Runtime, RuntimeConfig
from modelfleet.agent._slots import Slot, SlotHandle, SlotStore
from modelfleet.agent._update import TERMINAL, TRANSITIONS, CrashPoint, UpdateEvent, UpdateState, next_state

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Agent",
    "AgentConfig",
    "AgentState",
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
    "FailedVersion",
    "FreeSpace",
    "HealthPolicy",
    "HealthReport",
    "InstallConfig",
    "InstalledVersion",
    "Installer",
    "Journal",
    "JournalFile",
    "LiveVerdict",
    "LiveWatch",
    "OnnxRuntime",
    "Origin",
    "Outbox",
    "OutboxCounts",
    "OutboxItem",
    "Prediction",
    "Predictor",
    "Runtime",
    "RuntimeConfig",
    "Slot",
    "SlotHandle",
    "SlotStore",
    "StepResult",
    "Target",
    "UpdateEvent",
    "UpdateState",
    "agent_status",
    "backoff_delay",
    "check_health",
    "crash_checkpoint",
    "disk_free",
    "next_state",
]
