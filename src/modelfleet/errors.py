"""The one exception tree of modelfleet.

Three kinds of failure are kept apart, as python-tuf and httpx do: data from
outside that is wrong (a bundle with a bad signature, a manifest that breaks the
schema, a model that does not fit the device), a transport that failed, and a
caller that used the API wrongly (those raise the built-in ``TypeError`` /
``ValueError`` / ``RuntimeError`` and are not part of this tree)::

    ModelfleetError
    ├── ConfigError                    settings or key files that cannot be used
    ├── BadDataError                   data from outside is wrong; never trust it
    │   ├── BundleError                a bundle file is refused
    │   │   ├── BundleFormatError      tar layout: members, order, links, sizes, padding
    │   │   ├── ManifestError          schema, canonical form, semver, release
    │   │   ├── HashMismatchError      a payload's size or sha256 differs from the manifest
    │   │   └── SignatureError         signature envelope, unknown keys, below threshold
    │   ├── IncompatibleError          the bundle does not fit this device or application
    │   └── DeltaError                 a delta (.mfd) is corrupt, truncated, for another base, or rebuilds wrongly
    ├── BuildError                     ``bundle build`` refuses its inputs
    │   ├── ValidationSetError         the validation set does not fit the model's contract
    │   └── ParityError                the INT8 model disagrees with the float model too often
    ├── TransportError                 the network or a peer failed; retrying may help
    ├── NotFoundError                  the named object does not exist (or is not the caller's)
    ├── ConflictError                  the request contradicts what is stored (immutable versions, known keys)
    ├── AuthenticationError            no valid credential, proof or token: who is asking is unknown
    ├── PermissionDeniedError          the caller is known but may not do this
    ├── TooLargeError                  a request body or upload exceeds its configured bound
    └── StoreError                     the database is not in a state this code can use (schema revision)

Every ``ModelfleetError`` carries a stable machine-readable ``code`` (for
example ``"path_traversal"`` or ``"below_threshold"``) next to its human
message, so callers and tests can tell one refusal from another without
matching on text, and so a device can report *why* it refused.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadDataError",
    "BuildError",
    "BundleError",
    "BundleFormatError",
    "ConfigError",
    "ConflictError",
    "DeltaError",
    "HashMismatchError",
    "IncompatibleError",
    "ManifestError",
    "ModelfleetError",
    "NotFoundError",
    "ParityError",
    "PermissionDeniedError",
    "SignatureError",
    "StoreError",
    "TooLargeError",
    "TransportError",
    "ValidationSetError",
]


class ModelfleetError(Exception):
    """Base of every error modelfleet raises on purpose.

    Args:
        message: what is wrong, in words a user can act on.
        code: a stable identifier of the kind of problem (snake_case).
    """

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return self.message


class ConfigError(ModelfleetError):
    """Settings, key files or command-line input that cannot be used."""

    default_code = "config"


class BadDataError(ModelfleetError):
    """Data that came from outside is wrong and must not be trusted."""

    default_code = "bad_data"


class BundleError(BadDataError):
    """A bundle file is refused."""

    default_code = "bundle"


class BundleFormatError(BundleError):
    """The tar container breaks the bundle layout (members, order, links, sizes)."""

    default_code = "format"


class ManifestError(BundleError):
    """The manifest is not canonical JSON or does not match the schema."""

    default_code = "manifest"


class HashMismatchError(BundleError):
    """A payload member's size or sha256 differs from what the manifest says."""

    default_code = "hash_mismatch"


class SignatureError(BundleError):
    """The signatures do not establish trust in the manifest."""

    default_code = "signature"


class IncompatibleError(BadDataError):
    """A bundle does not fit the device or the application that would run it.

    ``reasons`` holds every mismatch found, not only the first.
    """

    default_code = "incompatible"

    def __init__(self, message: str, *, reasons: tuple[object, ...] = (), code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.reasons = reasons


class DeltaError(BadDataError):
    """A delta file is refused: bad header, another base, corrupt or truncated body, wrong result.

    Codes: ``bad_header``, ``unsupported_version``, ``wrong_base``, ``truncated``,
    ``corrupt``, ``too_large``, ``target_mismatch``. Whatever the code, no output
    file is left behind and the caller can fall back to the full download.
    """

    default_code = "delta"


class BuildError(ModelfleetError):
    """``bundle build`` refuses its inputs."""

    default_code = "build"


class ValidationSetError(BuildError):
    """The validation set does not fit the model's tensor contract."""

    default_code = "validation_set"


class ParityError(BuildError):
    """Float and INT8 models agree on too few validation inputs."""

    default_code = "parity"


class TransportError(ModelfleetError):
    """The network or a peer failed; the same request may succeed later."""

    default_code = "transport"


class NotFoundError(ModelfleetError):
    """The named object does not exist, or it is not the caller's to see."""

    default_code = "not_found"


class ConflictError(ModelfleetError):
    """The request contradicts what is stored: an immutable version, a known device key."""

    default_code = "conflict"


class AuthenticationError(ModelfleetError):
    """No valid credential, proof or token: the server cannot tell who is asking."""

    default_code = "unauthenticated"


class PermissionDeniedError(ModelfleetError):
    """The caller is known but may not do this."""

    default_code = "forbidden"


class TooLargeError(ModelfleetError):
    """A request body or an upload exceeds its configured bound."""

    default_code = "too_large"


class StoreError(ModelfleetError):
    """The database is not in a state this code can use: a missing, older or newer schema."""

    default_code = "store"
