"""The signed model bundle: manifest schema, signatures, container, build, compatibility.

Pure verification lives here and does no network I/O; the agent and the server
wrap it with their own I/O and policies. The builder and validation sets (numpy,
ONNX, ONNX Runtime) load on first use (PEP 562), so a device that only verifies,
reads manifests and checks compatibility never imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelfleet.bundle._canonical import canonical_bytes, parse_canonical
from modelfleet.bundle._compat import (
    AppContract,
    DeviceProfile,
    Incompatibility,
    IncompatibilityCode,
    PreprocessingRef,
    check_compatibility,
    require_compatible,
)
from modelfleet.bundle._container import BundleHeader, VerifiedBundle, read_bundle, read_header, write_bundle
from modelfleet.bundle._manifest import (
    BUNDLE_FORMAT,
    Behaviour,
    Budgets,
    Calibration,
    Contract,
    DType,
    Evidence,
    FeatureHistogram,
    FileEntry,
    Golden,
    HardwareTargets,
    Head,
    Histogram,
    Manifest,
    ModelInfo,
    Parity,
    Preprocessing,
    Provenance,
    Quantization,
    QuantizedTensor,
    References,
    RuntimeRequirement,
    TensorSpec,
    parse_manifest,
)
from modelfleet.bundle._signing import (
    SIGNATURE_FORMAT,
    SIGNING_CONTEXT,
    PublicKey,
    Signature,
    SignatureEnvelope,
    SigningKey,
    TrustedKeys,
    parse_envelope,
    verify_signatures,
)

if TYPE_CHECKING:
    from modelfleet.bundle._build import BuildOptions, BuildProgress, build_bundle
    from modelfleet.bundle._validation import ValidationSet, load_validation_set

_LAZY = {
    "BuildOptions": "_build",
    "BuildProgress": "_build",
    "ValidationSet": "_validation",
    "build_bundle": "_build",
    "load_validation_set": "_validation",
}
"""Public names whose modules import numpy and ONNX -> the private module that defines them."""

__all__ = [
    "BUNDLE_FORMAT",
    "SIGNATURE_FORMAT",
    "SIGNING_CONTEXT",
    "AppContract",
    "Behaviour",
    "Budgets",
    "BuildOptions",
    "BuildProgress",
    "BundleHeader",
    "Calibration",
    "Contract",
    "DType",
    "DeviceProfile",
    "Evidence",
    "FeatureHistogram",
    "FileEntry",
    "Golden",
    "HardwareTargets",
    "Head",
    "Histogram",
    "Incompatibility",
    "IncompatibilityCode",
    "Manifest",
    "ModelInfo",
    "Parity",
    "Preprocessing",
    "PreprocessingRef",
    "Provenance",
    "PublicKey",
    "Quantization",
    "QuantizedTensor",
    "References",
    "RuntimeRequirement",
    "Signature",
    "SignatureEnvelope",
    "SigningKey",
    "TensorSpec",
    "TrustedKeys",
    "ValidationSet",
    "VerifiedBundle",
    "build_bundle",
    "canonical_bytes",
    "check_compatibility",
    "load_validation_set",
    "parse_canonical",
    "parse_envelope",
    "parse_manifest",
    "read_bundle",
    "read_header",
    "require_compatible",
    "verify_signatures",
    "write_bundle",
]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - any exported object
    """Import the heavy module that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
