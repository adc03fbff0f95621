"""The delta builder's child process: ``python -m modelfleet.bundle._delta_build MEMORY BASE TARGET OUT FORMAT``.

It bounds its own address space before importing anything heavy, so a pair that
needs more memory fails here with ``MemoryError`` instead of pressing on the server
process, and prints ``{"codec": ...}`` on success. The server (``modelfleet.server._deltas``) runs it
with a time bound and records the outcome. ``FORMAT`` is the delta format version
asked of the encoder (``DeltaOptions.format_version``, ADR 0010 addendum).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Build one delta; exit status 0 with the codec as JSON on stdout, else 1 or 2 with the reason on stderr."""
    if len(argv) != 5:  # noqa: PLR2004 - MEMORY BASE TARGET OUT FORMAT
        sys.stderr.write("usage: python -m modelfleet.bundle._delta_build MEMORY_BYTES BASE TARGET OUT FORMAT\n")
        return 2
    limit = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from modelfleet.bundle.delta import DeltaOptions, encode  # noqa: PLC0415 - only after the memory bound is in place

    try:
        encoded = encode(Path(argv[1]), Path(argv[2]), options=DeltaOptions(format_version=int(argv[4])))
    except MemoryError:
        sys.stderr.write(f"the build needs more than {limit} bytes of memory\n")
        return 1
    Path(argv[3]).write_bytes(encoded.data)
    sizes = {codec.value: size for codec, size in encoded.sizes.items()}
    report = {"codec": encoded.codec.value, "format_version": encoded.header.format_version, "sizes": sizes}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
