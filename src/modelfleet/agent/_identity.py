"""The device's identity: its Ed25519 key pair, its id, and the credential enrollment gave it.

Everything lives under ``DATA/identity/``: ``device.key`` (PEM PKCS#8, mode 0600),
``device.json`` (id and public key) and ``credential`` (mode 0600). Every write is
temp file + fsync + rename + directory fsync, so a power cut leaves the old file
or the new one, never a torn key.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfleet.agent._slots import fsync_dir
from modelfleet.bundle import DeviceProfile
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError
from modelfleet.protocol import EnrollRequest, enrollment_message

__all__ = ["CredentialFile", "DeviceIdentity", "new_device_id", "write_private"]

IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
DEVICE_FILE = "device.json"
CREDENTIAL_FILE = "credential"


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically and durably with ``data``, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def new_device_id() -> str:
    """A random device id for a device that was not given one."""
    return f"dev-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device id and the private key that proves it.

    Attributes:
        device_id: the id the device enrolls with.
        key: its Ed25519 private key (never leaves the device).
    """

    device_id: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        """The raw public key, base64 (the wire form)."""
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    @staticmethod
    def directory(data_dir: Path) -> Path:
        """Where the identity files live."""
        return data_dir / IDENTITY_DIR

    @classmethod
    def load(cls, data_dir: Path) -> DeviceIdentity | None:
        """The saved identity, or ``None`` when this data directory has none yet.

        Raises:
            ConfigError: ``bad_identity`` when the files exist but are unreadable or do not match.
        """
        directory = cls.directory(data_dir)
        key_path, device_path = directory / KEY_FILE, directory / DEVICE_FILE
        if not device_path.exists():
            return None
        try:
            document = json.loads(device_path.read_text())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            msg = f"the device identity in {directory} is unreadable: {exc}"
            raise ConfigError(msg, code="bad_identity") from None
        if not isinstance(key, Ed25519PrivateKey) or not isinstance(document, dict):
            msg = f"the device identity in {directory} is not an Ed25519 key pair"
            raise ConfigError(msg, code="bad_identity")
        identity = cls(str(document.get("device_id")), key)
        if document.get("public_key") != identity.public_key:
            msg = f"{device_path} names another public key than {key_path} holds"
            raise ConfigError(msg, code="bad_identity")
        return identity

    @classmethod
    def load_or_create(cls, data_dir: Path, device_id: str | None = None) -> DeviceIdentity:
        """The saved identity; a new key pair (and id, unless given) on first use.

        Raises:
            ConfigError: ``identity_mismatch`` when ``device_id`` differs from the saved id.
        """
        identity = cls.load(data_dir)
        if identity is not None:
            if device_id is not None and device_id != identity.device_id:
                msg = f"this data directory belongs to device {identity.device_id!r}, not {device_id!r}"
                raise ConfigError(msg, code="identity_mismatch")
            return identity
        identity = cls(device_id or new_device_id(), Ed25519PrivateKey.generate())
        identity.save(data_dir)
        return identity

    def save(self, data_dir: Path) -> None:
        """Write the key (0600) first, then ``device.json``: an identity exists only once both do."""
        directory = self.directory(data_dir)
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(directory / KEY_FILE, pem)
        document = {"device_id": self.device_id, "public_key": self.public_key}
        write_private(directory / DEVICE_FILE, json.dumps(document, indent=1).encode(), mode=0o644)

    def enroll_request(self, inventory: DeviceProfile, clock: Clock, enroll_token: str | None = None) -> EnrollRequest:
        """A signed enrollment request issued now (by ``clock``)."""
        unsigned = EnrollRequest(
            device_id=self.device_id,
            public_key=self.public_key,
            issued_at=clock.now(),
            enroll_token=enroll_token,
            inventory=inventory,
            proof="",
        )
        proof = base64.b64encode(self.key.sign(enrollment_message(unsigned))).decode("ascii")
        return unsigned.model_copy(update={"proof": proof})


class CredentialFile:
    """The bearer credential (``mfd_...``), kept in a 0600 file.

    Args:
        data_dir: the agent's data directory.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = DeviceIdentity.directory(data_dir) / CREDENTIAL_FILE

    def load(self) -> str | None:
        """The stored credential, or ``None``."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def save(self, credential: str) -> None:
        """Store a credential, replacing any earlier one."""
        write_private(self.path, credential.encode())

    def clear(self) -> None:
        """Forget the credential (the server no longer accepts it)."""
        self.path.unlink(missing_ok=True)
        if self.path.parent.exists():
            fsync_dir(self.path.parent)
