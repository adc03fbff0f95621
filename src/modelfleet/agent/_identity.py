"""The device's identity: its Ed25519 key pair, its id, and the credential enrollment gave it.

Everything lives under ``DATA/identity/``: ``device.key`` (PEM PKCS#8, mode 0600),
``device.json`` (id and public key) and ``credential`` (mode 0600). Every write is
temp file + fsync + rename + directory fsync, so a power cut leaves the old file
or the new one, never a torn key.

The private key is parsed (and ``cryptography`` loaded) only to sign an enrollment:
an enrolled agent restarts, checks in and idles without it.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelfleet.agent._slots import fsync_dir, replace_durably
from modelfleet.bundle import DeviceProfile, parse_private_key
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError
from modelfleet.protocol import EnrollRequest, enrollment_message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["CredentialFile", "DeviceIdentity", "new_device_id", "write_private"]

IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
DEVICE_FILE = "device.json"
CREDENTIAL_FILE = "credential"


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically and durably with ``data``, readable by the owner only (in a 0700 directory)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_durably(path, data, mode)


def new_device_id() -> str:
    """A random device id for a device that was not given one."""
    return f"dev-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device id and the private key that proves it.

    Attributes:
        device_id: the id the device enrolls with.
        public_key: the raw public key, base64 (the wire form).
        key_pem: the private key, PEM PKCS#8 (never leaves the device).
    """

    device_id: str
    public_key: str
    key_pem: bytes

    @classmethod
    def generate(cls, device_id: str) -> DeviceIdentity:
        """A new key pair for ``device_id``."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the module doc
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(device_id, _public_of(key), pem)

    @property
    def key(self) -> Ed25519PrivateKey:
        """The private key, parsed now and checked against :attr:`public_key`.

        Raises:
            ConfigError: ``bad_identity`` when the PEM is not an Ed25519 private key or holds another key pair.
        """
        try:
            key = parse_private_key(self.key_pem, f"the private key of device {self.device_id!r}")
        except ConfigError as exc:
            raise ConfigError(exc.message, code="bad_identity") from None
        if _public_of(key) != self.public_key:
            msg = f"the private key of device {self.device_id!r} belongs to another public key than device.json names"
            raise ConfigError(msg, code="bad_identity")
        return key

    @staticmethod
    def directory(data_dir: Path) -> Path:
        """Where the identity files live."""
        return data_dir / IDENTITY_DIR

    @classmethod
    def load(cls, data_dir: Path) -> DeviceIdentity | None:
        """The saved identity, or ``None`` when this data directory has none yet.

        The key is read, not parsed: :attr:`key` checks it when an enrollment needs it.

        Raises:
            ConfigError: ``bad_identity`` when the files exist but are unreadable or malformed.
        """
        directory = cls.directory(data_dir)
        key_path, device_path = directory / KEY_FILE, directory / DEVICE_FILE
        if not device_path.exists():
            return None
        try:
            document = json.loads(device_path.read_text())
            pem = key_path.read_bytes()
        except (OSError, ValueError) as exc:
            msg = f"the device identity in {directory} is unreadable: {exc}"
            raise ConfigError(msg, code="bad_identity") from None
        if (
            not isinstance(document, dict)
            or not isinstance(document.get("device_id"), str)
            or not isinstance(document.get("public_key"), str)
            or b"-----BEGIN PRIVATE KEY-----" not in pem
        ):
            msg = f"the device identity in {directory} is not a device id with a PEM key pair"
            raise ConfigError(msg, code="bad_identity")
        return cls(document["device_id"], document["public_key"], pem)

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
        identity = cls.generate(device_id or new_device_id())
        identity.save(data_dir)
        return identity

    def save(self, data_dir: Path) -> None:
        """Write the key (0600) first, then ``device.json``: an identity exists only once both do."""
        directory = self.directory(data_dir)
        write_private(directory / KEY_FILE, self.key_pem)
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


def _public_of(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the module doc

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


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
