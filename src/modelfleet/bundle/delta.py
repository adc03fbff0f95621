"""Model-aware delta updates between two bundles (``.mfd``, ADR 0009).

``encode`` builds the smallest delta among a tensor-aware codec for ONNX
initializers and generic byte deltas (zstd with the old bundle as prefix,
bsdiff4); ``apply`` rebuilds the new bundle from the installed one in bounded
memory, checks its sha256 and size, and writes it atomically; ``read_delta_header``
tells, before any work, which base a delta needs and which bundle it rebuilds.
"""

from __future__ import annotations

from modelfleet.bundle._delta_apply import DeltaLimits, apply
from modelfleet.bundle._delta_encode import DeltaOptions, EncodedDelta, encode
from modelfleet.bundle._delta_format import (
    DELTA_FORMAT_VERSION,
    DELTA_MAGIC,
    DeltaCodec,
    DeltaHeader,
    read_delta_header,
)

__all__ = [
    "DELTA_FORMAT_VERSION",
    "DELTA_MAGIC",
    "DeltaCodec",
    "DeltaHeader",
    "DeltaLimits",
    "DeltaOptions",
    "EncodedDelta",
    "apply",
    "encode",
    "read_delta_header",
]
