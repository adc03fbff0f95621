"""The signed model bundle: manifest schema, signatures, container, build, compatibility.

Pure verification lives here and does no network I/O; the agent and the server
wrap it with their own I/O and policies. The builder and validation sets (numpy,
ONNX, ONNX Runtime) load on first use (PEP 562), so a device that only verifies,
reads manifests and checks compatibility never imports them. The delta codec is
``modelfleet.bundle.delta``; only its format versions are named here, for the
agent's check-in report and the server's choice of format (ADR 0010).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfleet._lazy import lazy_exports
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
from modelfleet.bundle._delta_format import READABLE_VERSIONS as DELTA_READABLE_VERSIONS
from modelfleet.bundle._delta_format import written_version as delta_written_version
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
    parse_private_key,
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
    "DELTA_READABLE_VERSIONS",
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
    "delta_written_version",
    "load_validation_set",
    "parse_canonical",
    "parse_envelope",
    "parse_manifest",
    "parse_private_key",
    "read_bundle",
    "read_header",
    "require_compatible",
    "verify_signatures",
    "write_bundle",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
