"""Typed settings, and the only module that reads environment variables.

Every bound on input from outside (sizes, counts, retries, time) lives here in a
frozen dataclass that callers pass in; nothing else looks at ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError

__all__ = ["BundleLimits", "Settings", "load_settings"]

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
ENV_PREFIX = "MODELFLEET_"


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Bounds a bundle reader enforces before it trusts anything.

    Attributes:
        max_manifest_bytes: largest ``manifest.json`` accepted.
        max_signature_bytes: largest ``manifest.sig`` accepted.
        max_signatures: most signatures in one envelope.
        max_members: most payload files in one bundle.
        max_member_bytes: largest single payload file.
        max_total_bytes: largest sum of payload sizes.
        chunk_bytes: read/hash/write unit; bounds the reader's memory.
    """

    max_manifest_bytes: int = 4 * _MIB
    max_signature_bytes: int = 64 * 1024
    max_signatures: int = 32
    max_members: int = 64
    max_member_bytes: int = 8 * _GIB
    max_total_bytes: int = 16 * _GIB
    chunk_bytes: int = 1 * _MIB

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                msg = f"bundle limit {f.name} must be a positive integer, got {value!r}"
                raise ConfigError(msg, code="bad_setting")


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings of one modelfleet process.

    Attributes:
        bundle: bounds for reading bundles.
        server: default admin/device API URL for CLI commands.
        token: default admin token for CLI commands.
        data_dir: the server's data directory (``server run`` passes it to its worker processes).
        database_url: overrides the database URL saved in the data directory.
        crash_at: test-only: the agent install step at which the process SIGKILLs itself
            (``MODELFLEET_CRASH_AT``; see ``modelfleet.agent.CrashPoint``).
    """

    bundle: BundleLimits = field(default_factory=BundleLimits)
    server: str | None = None
    token: str | None = None
    data_dir: Path | None = None
    database_url: str | None = None
    crash_at: str | None = None


def _int_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        msg = f"{ENV_PREFIX}{name} must be an integer, got {raw!r}"
        raise ConfigError(msg, code="bad_setting") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``MODELFLEET_*`` environment variables.

    Bundle limits are named ``MODELFLEET_BUNDLE_<FIELD>`` (for example
    ``MODELFLEET_BUNDLE_MAX_MEMBER_BYTES``).

    Raises:
        ConfigError: a variable is set to something unusable.
    """
    source: Mapping[str, str] = os.environ if env is None else env
    defaults = BundleLimits()
    limits: dict[str, Any] = {
        f.name: _int_from_env(source, "BUNDLE_" + f.name.upper(), getattr(defaults, f.name))
        for f in dataclasses.fields(BundleLimits)
    }
    return Settings(
        bundle=BundleLimits(**limits),
        server=source.get(ENV_PREFIX + "SERVER") or None,
        token=source.get(ENV_PREFIX + "TOKEN") or None,
        data_dir=Path(data) if (data := source.get(ENV_PREFIX + "DATA")) else None,
        database_url=source.get(ENV_PREFIX + "DATABASE_URL") or None,
        crash_at=source.get(ENV_PREFIX + "CRASH_AT") or None,
    )
