"""The fleet server: device API, admin API, metrics (ADR 0003).

``create_app`` builds the FastAPI app of one process from a :class:`ServerConfig`;
``init_server`` prepares a data directory; :func:`desired_state` is the one
place that decides what a device should run, replaceable through
:class:`DesiredStateResolver`.
"""

from __future__ import annotations

from modelfleet.server._app import create_app
from modelfleet.server._config import ServerConfig, load_server_config, save_server_config
from modelfleet.server._desired import DesiredStateResolver, artifact_url, desired_state
from modelfleet.server._retrain import (
    SIGNATURE_HEADER,
    DriftCheck,
    DriftSettings,
    RetrainNotifier,
    check_drift,
    verify_signature,
)
from modelfleet.server._setup import InitResult, init_server

__all__ = [
    "SIGNATURE_HEADER",
    "DesiredStateResolver",
    "DriftCheck",
    "DriftSettings",
    "InitResult",
    "RetrainNotifier",
    "ServerConfig",
    "artifact_url",
    "check_drift",
    "create_app",
    "desired_state",
    "init_server",
    "load_server_config",
    "save_server_config",
    "verify_signature",
]
