"""The server's settings, saved as ``DATA/server.json`` by ``server init``.

Paths inside the data directory are saved relative to it and a SQLite database
in it is saved as ``null`` (the default), so the directory can be moved.
Environment overrides are applied by the caller through ``modelfleet.config``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.bundle import PublicKey, TrustedKeys
from modelfleet.errors import ConfigError
from modelfleet.server._deltas import DeltaSettings
from modelfleet.server._retrain import DriftSettings
from modelfleet.store import default_database_url

__all__ = ["CONFIG_FILE", "ServerConfig", "load_server_config", "save_server_config"]

CONFIG_FILE = "server.json"
_MIB = 1024 * 1024


class ServerConfig(BaseModel):
    """Everything one server process needs to know; every bound on outside input is here.

    Attributes:
        data_dir: the data directory (config, keys, blobs, the default SQLite database).
        database_url: SQLAlchemy URL of the database.
        blob_dir: where bundle bytes are stored (content-addressed).
        trusted_keys: public key files uploads must be signed by.
        threshold: how many distinct trusted keys must sign an upload.
        poll_seconds: how often devices are told to check in.
        public_url: the base URL devices reach the server at (download links).
        max_upload_bytes: largest bundle upload accepted.
        max_body_bytes: largest JSON request body accepted.
        last_seen_flush_seconds: how often buffered last-seen times are written.
        enroll_skew_seconds: how far an enrollment's ``issued_at`` may be from the server clock.
        drift: the drift monitor's policy and where ``retrain.requested`` goes (webhook, command).
        mqtt_url: the MQTT broker wake-ups are published to (``mqtt://host:1883``); ``None`` sends none.
        reconcile_seconds: how often the reconciler looks at running rollouts.
        rollout_cache_seconds: how long a process reuses its read of started rollouts for check-ins.
        deltas: whether and how deltas between bundles are offered and built (ADR 0009).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path
    database_url: str = Field(min_length=1)
    blob_dir: Path
    trusted_keys: tuple[Path, ...] = Field(min_length=1)
    threshold: int = Field(default=1, ge=1)
    poll_seconds: int = Field(default=300, ge=1, le=86_400)
    public_url: str = Field(default="http://127.0.0.1:8080", pattern=r"^https?://\S+$")
    max_upload_bytes: int = Field(default=1024 * _MIB, ge=1)
    max_body_bytes: int = Field(default=8 * _MIB, ge=1024)
    last_seen_flush_seconds: float = Field(default=30.0, gt=0, le=3600)
    enroll_skew_seconds: int = Field(default=600, ge=1, le=86_400)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    mqtt_url: str | None = Field(default=None, pattern=r"^mqtts?://\S+$")
    reconcile_seconds: float = Field(default=10.0, gt=0, le=3600)
    rollout_cache_seconds: float = Field(default=1.0, ge=0, le=3600)
    deltas: DeltaSettings = Field(default_factory=DeltaSettings)

    def trusted(self) -> TrustedKeys:
        """Load the pinned bundle keys and threshold.

        Raises:
            ConfigError: a key file is unreadable or the threshold exceeds the keys.
        """
        return TrustedKeys.of((PublicKey.from_file(path) for path in self.trusted_keys), self.threshold)


def _relative(path: Path, data_dir: Path) -> str:
    return str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)


def _to_disk(config: ServerConfig) -> dict[str, Any]:
    document = config.model_dump(mode="json", exclude={"data_dir"})
    data_dir = config.data_dir
    document["blob_dir"] = _relative(config.blob_dir, data_dir)
    document["trusted_keys"] = [_relative(path, data_dir) for path in config.trusted_keys]
    if config.database_url == default_database_url(data_dir):
        document["database_url"] = None
    return document


def save_server_config(config: ServerConfig) -> Path:
    """Write ``DATA/server.json`` atomically (temp file, fsync, rename)."""
    target = config.data_dir / CONFIG_FILE
    temp = target.with_suffix(".json.partial")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(_to_disk(config), handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(target)
    return target


def load_server_config(data_dir: Path) -> ServerConfig:
    """Read ``DATA/server.json``, resolving relative paths against the data directory.

    Raises:
        ConfigError: the directory is not initialised or the file is not a valid config.
    """
    data_dir = data_dir.absolute()
    document = _read_document(data_dir / CONFIG_FILE)
    document["data_dir"] = data_dir
    document["database_url"] = document.get("database_url") or default_database_url(data_dir)
    try:
        config = ServerConfig.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        msg = f"{data_dir / CONFIG_FILE}: {where}: {first['msg']}"
        raise ConfigError(msg, code="bad_server_config") from None
    blob_dir, keys = data_dir / config.blob_dir, tuple(data_dir / key for key in config.trusted_keys)
    return config.model_copy(update={"blob_dir": blob_dir, "trusted_keys": keys})


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"{path.parent} is not an initialised server directory (no {path.name}); run `modelfleet server init`"
        raise ConfigError(msg, code="not_initialized") from None
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg, code="bad_server_config") from None
    if not isinstance(document, dict):
        msg = f"{path} must hold a JSON object"
        raise ConfigError(msg, code="bad_server_config")
    return document
