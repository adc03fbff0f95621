"""Golden test vectors: a few validation rows and the outputs the shipped model gives for them.

A device runs them after switching to a new version; outputs outside tolerance
mean the model, the runtime or the hardware does not behave as it did at build.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelfleet.bundle._inference import Array, Session, batches
from modelfleet.errors import BuildError

__all__ = ["GOLDEN_MEMBER", "write_golden", "write_npz"]

GOLDEN_MEMBER = "golden.npz"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: no build time leaks into the bytes


def write_golden(
    session: Session, inputs: Mapping[str, Array], indices: npt.NDArray[np.intp], rows: int, dest: Path
) -> None:
    """Run the chosen rows through ``session`` (``rows`` per run) and save ``input.*`` / ``output.*`` arrays.

    Raises:
        BuildError: ``golden`` when an output has no batch axis to join runs on.
    """
    arrays = {f"input.{name}": array[indices] for name, array in inputs.items()}
    runs = [session.run(feeds) for feeds in batches(inputs, rows, indices)]
    for name in runs[0]:
        parts = [run[name] for run in runs]
        if len(parts) > 1 and parts[0].ndim == 0:
            msg = f"output {name!r} has no batch axis, so golden outputs of {len(parts)} runs cannot be stored"
            raise BuildError(msg, code="golden")
        arrays[f"output.{name}"] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    write_npz(dest, arrays)


def write_npz(dest: Path, arrays: Mapping[str, Array]) -> None:
    """Write an ``.npz`` that ``numpy.load`` reads, byte-identical for identical arrays.

    ``numpy.savez`` stamps each member with the current time; this writes members
    in name order with a fixed timestamp and no compression.
    """
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
