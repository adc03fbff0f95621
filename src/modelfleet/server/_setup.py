"""``server init``: a data directory with config, a trusted signing key, a migrated database, one admin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelfleet.bundle import SigningKey
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import ConfigError
from modelfleet.server._config import CONFIG_FILE, ServerConfig, save_server_config
from modelfleet.store import create_admin_token, default_database_url, make_engine, redact_url, session_factory, upgrade

__all__ = ["InitResult", "init_server"]

SIGNING_KEY_NAME = "bundle-signing"
FIRST_ADMIN = "initial-admin"


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init_server`` made; ``admin_token`` exists nowhere else (only its hash is stored).

    Attributes:
        config: the saved configuration.
        database: the database URL, password redacted.
        signing_key: the private bundle signing key (move it off the server).
        trusted_key: the public key the server verifies uploads with.
        admin_token: the first admin token's secret.
    """

    config: ServerConfig
    database: str
    signing_key: Path
    trusted_key: Path
    admin_token: str


def init_server(data_dir: Path, database_url: str | None = None, clock: Clock | None = None) -> InitResult:
    """Initialise ``data_dir``: signing key pair, migrated database, first admin token, ``server.json``.

    ``server.json`` is written last, so a directory is initialised only when everything else worked.

    Raises:
        ConfigError: the directory is already initialised (``already_initialized``), or a key exists.
    """
    data_dir = data_dir.absolute()
    if (data_dir / CONFIG_FILE).exists():
        msg = f"{data_dir} is already initialised; refusing to overwrite its keys and admin token"
        raise ConfigError(msg, code="already_initialized")
    data_dir.mkdir(parents=True, exist_ok=True)
    signing_key, trusted_key = SigningKey.generate().save(data_dir / "keys", SIGNING_KEY_NAME)
    config = ServerConfig(
        data_dir=data_dir,
        database_url=database_url or default_database_url(data_dir),
        blob_dir=data_dir / "blobs",
        trusted_keys=(trusted_key,),
    )
    admin_token = _migrate_and_create_admin(config, clock or SystemClock())
    save_server_config(config)
    return InitResult(config, redact_url(config.database_url), signing_key, trusted_key, admin_token)


def _migrate_and_create_admin(config: ServerConfig, clock: Clock) -> str:
    engine = make_engine(config.database_url)
    try:
        upgrade(engine)
        with session_factory(engine).begin() as session:
            issued = create_admin_token(session, name=FIRST_ADMIN, role="admin", now=clock.now(), created_by="init")
    finally:
        engine.dispose()
    return issued.secret
