"""Ed25519 keys, the signature envelope, and k-of-n verification (pure).

A signature covers ``SIGNING_CONTEXT + manifest bytes``. The context string keeps
a bundle signature from ever being valid for another message signed with the
same key (device assignments, later metadata), see ADR 0002.

A key id is the hex sha256 of the raw 32-byte public key, so it can be derived
from the key itself and never has to be trusted on its own.

``cryptography`` loads on the first signature made or checked, not on import: an
idle device agent holds its pinned keys (parsed here from their fixed RFC 8410
encoding) but verifies nothing until a bundle arrives, and the library's native
code is about 9 MB of its memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.bundle._canonical import canonical_bytes, parse_canonical
from modelfleet.config import BundleLimits
from modelfleet.errors import ConfigError, ManifestError, SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "SIGNATURE_FORMAT",
    "SIGNING_CONTEXT",
    "PublicKey",
    "Signature",
    "SignatureEnvelope",
    "SigningKey",
    "TrustedKeys",
    "parse_envelope",
    "parse_private_key",
    "verify_signatures",
]

SIGNING_CONTEXT = b"modelfleet/bundle-manifest/v1\x00"
SIGNATURE_FORMAT: Literal["modelfleet.sig.v1"] = "modelfleet.sig.v1"
_KEYID_PATTERN = r"^[0-9a-f]{64}$"
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 ``SubjectPublicKeyInfo`` before its 32 key bytes (RFC 8410 section 4: one fixed encoding)."""
_PEM_PUBLIC = ("-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----")


def _keyid(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key and its id."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:  # noqa: PLR2004 - Ed25519 public keys are 32 bytes
            msg = f"an Ed25519 public key is 32 bytes, got {len(self.raw)}"
            raise ValueError(msg)

    @property
    def keyid(self) -> str:
        """Hex sha256 of the raw key."""
        return _keyid(self.raw)

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Load a PEM ``SubjectPublicKeyInfo`` Ed25519 key.

        Raises:
            ConfigError: not a PEM public key, or not an Ed25519 one.
        """
        text = data.decode("ascii", errors="replace").strip()
        begin, end = _PEM_PUBLIC
        if not (text.startswith(begin) and text.endswith(end)):
            msg = f"not a PEM public key: expected {begin} ... {end}"
            raise ConfigError(msg, code="bad_key_file")
        try:
            der = base64.b64decode("".join(text[len(begin) : -len(end)].split()), validate=True)
        except binascii.Error as exc:
            msg = f"not a PEM public key: {exc}"
            raise ConfigError(msg, code="bad_key_file") from None
        if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
            msg = "expected an Ed25519 public key (RFC 8410), got another kind of key"
            raise ConfigError(msg, code="bad_key_file")
        return cls(der[len(_SPKI_PREFIX) :])

    @classmethod
    def from_file(cls, path: Path) -> PublicKey:
        """Read a ``.pub`` file written by ``modelfleet keys generate``."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            msg = f"cannot read public key {path}: {exc.strerror}"
            raise ConfigError(msg, code="bad_key_file") from None
        try:
            return cls.from_pem(data)
        except ConfigError as exc:
            msg = f"{path}: {exc.message}"
            raise ConfigError(msg, code=exc.code) from None

    def to_pem(self) -> bytes:
        """Return the PEM encoding."""
        body = base64.encodebytes(_SPKI_PREFIX + self.raw).decode("ascii")
        begin, end = _PEM_PUBLIC
        return f"{begin}\n{body}{end}\n".encode("ascii")

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Return whether ``signature`` is this key's signature of ``message``."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - loads on first use (see module doc)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key that signs manifests."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - loads on first use

        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a new random key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        """Read a PEM PKCS#8 private key file.

        Raises:
            ConfigError: unreadable, not PEM, or not Ed25519.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            msg = f"cannot read signing key {path}: {exc.strerror}"
            raise ConfigError(msg, code="bad_key_file") from None
        return cls(parse_private_key(data, str(path)))

    def save(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``name.key`` (mode 0600) and ``name.pub`` into ``directory``.

        Refuses to overwrite an existing key.
        """
        directory.mkdir(parents=True, exist_ok=True)
        private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
        for path in (private_path, public_path):
            if path.exists():
                msg = f"{path} exists; refusing to overwrite a key"
                raise ConfigError(msg, code="key_exists")
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - loads on first use

        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        public_path.write_bytes(self.public.to_pem())
        return private_path, public_path

    def sign(self, manifest_bytes: bytes) -> Signature:
        """Sign canonical manifest bytes."""
        raw = self._private.sign(SIGNING_CONTEXT + manifest_bytes)
        return Signature(keyid=self.public.keyid, alg="ed25519", sig=base64.b64encode(raw).decode("ascii"))


def parse_private_key(data: bytes, where: str) -> Ed25519PrivateKey:
    """An unencrypted PEM PKCS#8 Ed25519 private key.

    Raises:
        ConfigError: ``bad_key_file``, naming ``where``: not PEM, encrypted, or another kind of key.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - loads on first use
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        msg = f"{where}: not an unencrypted PEM private key ({exc})"
        raise ConfigError(msg, code="bad_key_file") from None
    if not isinstance(key, Ed25519PrivateKey):
        msg = f"{where}: expected an Ed25519 private key, got {type(key).__name__}"
        raise ConfigError(msg, code="bad_key_file")
    return key


class Signature(BaseModel):
    """One signature: who signed (key id), how, and the base64 signature bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    keyid: str = Field(pattern=_KEYID_PATTERN)
    alg: str = Field(min_length=1, max_length=32)
    sig: str = Field(min_length=1, max_length=1024)


class SignatureEnvelope(BaseModel):
    """The content of ``manifest.sig``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["modelfleet.sig.v1"]
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        """Return the canonical JSON bytes of the envelope."""
        return canonical_bytes(self.model_dump(mode="json"))

    @classmethod
    def of(cls, signatures: Iterable[Signature]) -> SignatureEnvelope:
        """Build an envelope from signatures."""
        return cls(format=SIGNATURE_FORMAT, signatures=tuple(signatures))


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The pinned key set and how many distinct keys must sign.

    Raises:
        ConfigError: the threshold is below 1 or above the number of keys.
    """

    keys: Mapping[str, PublicKey]
    threshold: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= len(self.keys):
            msg = f"threshold {self.threshold} needs 1 <= threshold <= {len(self.keys)} trusted keys"
            raise ConfigError(msg, code="bad_threshold")

    @classmethod
    def of(cls, keys: Iterable[PublicKey], threshold: int = 1) -> TrustedKeys:
        """Pin ``keys`` (duplicates collapse) with a threshold."""
        return cls({key.keyid: key for key in keys}, threshold)


def parse_envelope(data: bytes) -> SignatureEnvelope:
    """Parse ``manifest.sig`` bytes.

    Raises:
        SignatureError: not canonical JSON or not the envelope schema.
    """
    try:
        parse_canonical(data, what="manifest.sig")
        return SignatureEnvelope.model_validate_json(data)
    except ManifestError as exc:
        raise SignatureError(exc.message, code="malformed_signature") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        msg = f"manifest.sig: {where}: {first['msg']}"
        raise SignatureError(msg, code="malformed_signature") from None


def _decode_signature(entry: Signature) -> bytes:
    try:
        return base64.b64decode(entry.sig, validate=True)
    except binascii.Error:
        msg = f"signature by key {entry.keyid[:16]} is not base64"
        raise SignatureError(msg, code="malformed_signature") from None


@dataclass(slots=True)
class _Tally:
    """What each signature in an envelope turned out to be."""

    good: set[str] = field(default_factory=set)
    bad: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicated: bool = False


def _tally(envelope: SignatureEnvelope, message: bytes, trusted: TrustedKeys) -> _Tally:
    tally = _Tally()
    seen: set[str] = set()
    for entry in envelope.signatures:
        if entry.alg != "ed25519":
            msg = f"signature by key {entry.keyid[:16]} uses algorithm {entry.alg!r}; only 'ed25519' is accepted"
            raise SignatureError(msg, code="unsupported_algorithm")
        tally.duplicated |= entry.keyid in seen
        seen.add(entry.keyid)
        key = trusted.keys.get(entry.keyid)
        if key is None:
            tally.unknown.append(entry.keyid)
        elif key.verify(_decode_signature(entry), message):
            tally.good.add(entry.keyid)
        else:
            tally.bad.append(entry.keyid)
    return tally


def _refusal(tally: _Tally, threshold: int) -> SignatureError:
    """Name the most specific reason the threshold was not met."""
    need = f"{len(tally.good)} of the required {threshold} trusted signatures verified"
    if tally.bad:
        msg = f"signature by trusted key {tally.bad[0][:16]} does not match the manifest ({need}); it was altered"
        return SignatureError(msg, code="bad_signature")
    if tally.duplicated:
        return SignatureError(f"a key signed more than once and is counted once: {need}", code="duplicate_signature")
    if not tally.good:
        keys = ", ".join(k[:16] for k in tally.unknown)
        return SignatureError(f"signed only by keys that are not among the trusted keys: {keys}", code="unknown_key")
    return SignatureError(f"below threshold: {need}", code="below_threshold")


def verify_signatures(
    manifest_bytes: bytes,
    signature_bytes: bytes,
    trusted: TrustedKeys,
    limits: BundleLimits | None = None,
) -> frozenset[str]:
    """Check that at least ``trusted.threshold`` distinct pinned keys signed the manifest.

    Pure: no I/O. Signatures by unknown keys are ignored, a key that signs twice
    counts once, and a bad signature by a trusted key does not count.

    Returns:
        The ids of the trusted keys whose signatures verified.

    Raises:
        SignatureError: with ``code`` one of ``malformed_signature``,
            ``too_many_signatures``, ``unsupported_algorithm``, ``no_signatures``,
            ``bad_signature``, ``unknown_key``, ``duplicate_signature``,
            ``below_threshold``.
    """
    limits = limits or BundleLimits()
    envelope = parse_envelope(signature_bytes)
    if len(envelope.signatures) > limits.max_signatures:
        msg = f"manifest.sig holds {len(envelope.signatures)} signatures; the limit is {limits.max_signatures}"
        raise SignatureError(msg, code="too_many_signatures")
    if not envelope.signatures:
        raise SignatureError("manifest.sig holds no signatures", code="no_signatures")
    tally = _tally(envelope, SIGNING_CONTEXT + manifest_bytes, trusted)
    if len(tally.good) >= trusted.threshold:
        return frozenset(tally.good)
    raise _refusal(tally, trusted.threshold)
