"""Delta downloads (shared/DESIGN.md §9, ADR 0009): rebuild the assigned bundle from the running version.

A delta is untrusted bytes like any download. Its sha256 and size come with the
check-in; its header names the base it applies to, and the base is re-packed from
the running version's files (the bundle container is deterministic) and must hash
to exactly that. The rebuilt bundle must hash to the assignment's sha256, and then
goes through the same verification as a full download (signatures, manifest
hashes). Any failure on the way is a reason, never an error: the installer
downloads the full bundle instead. Temp files live in the model's downloads
directory and are removed on every path.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from modelfleet.agent._download import Downloader
from modelfleet.agent._journal import Target
from modelfleet.agent._slots import SIGNATURE_FILE, SlotStore
from modelfleet.bundle import parse_envelope, write_bundle
from modelfleet.errors import ModelfleetError

__all__ = ["DeltaDelivery", "fetch_by_delta", "repack_bundle"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class DeltaDelivery:
    """How a delta attempt went: bytes fetched for it, bytes it saved, and why the full bundle is needed if so."""

    fetched: int
    saved: int
    reason: str | None

    @property
    def delivered(self) -> bool:
        """Whether the bundle was rebuilt from the delta (no full download needed)."""
        return self.reason is None


def repack_bundle(slots: SlotStore, model: str, slot: str, out: Path) -> str:
    """Write the ``.mfb`` a published version came from to ``out``; returns its sha256.

    Raises:
        NotFoundError: the version is gone.
        OSError: the files cannot be read or ``out`` written.
    """
    with slots.open(model, slot) as handle:
        envelope = parse_envelope((handle.path / SIGNATURE_FILE).read_bytes())
        payload = {entry.path: handle.path / entry.path for entry in handle.manifest.files}
        write_bundle(out, handle.manifest, envelope, payload)
    return _sha256_of(out)


def fetch_by_delta(downloader: Downloader, slots: SlotStore, target: Target, base: str | None) -> DeltaDelivery:
    """Rebuild ``target``'s bundle as ``downloads/<sha256>.mfb`` from version ``base`` and the offered delta."""
    # numpy (tensor deltas) loads when a delta is applied, not in the idle agent loop (tests/agent/test_imports.py).
    from modelfleet.bundle.delta import apply, read_delta_header  # noqa: PLC0415

    offer = target.delta
    if offer is None or base is None:
        return DeltaDelivery(0, 0, "no delta offered" if offer is None else "nothing installed to apply it to")
    directory = slots.downloads_dir(target.model)
    base_file = directory / f".base-{target.sha256[:12]}.mfb"
    delta_file: Path | None = None
    try:
        delta_file = downloader.fetch(offer.url, directory, sha256=offer.sha256, size=offer.size)
        header = read_delta_header(delta_file)
        if header.target_sha256 != target.sha256:
            return DeltaDelivery(offer.size, 0, f"the delta rebuilds {header.target_sha256[:12]}, not {target.slot}")
        if repack_bundle(slots, target.model, base, base_file) != header.base_sha256:
            return DeltaDelivery(offer.size, 0, f"version {base} does not re-pack to the delta's base")
        apply(base_file, delta_file, directory / f"{target.sha256}.mfb")
    except (ModelfleetError, OSError) as exc:
        logger.warning("delta for %s %s not used, downloading the full bundle: %s", target.model, target.version, exc)
        return DeltaDelivery(offer.size if delta_file else 0, 0, str(exc)[:512])
    finally:
        base_file.unlink(missing_ok=True)
        if delta_file is not None:
            delta_file.unlink(missing_ok=True)
    return DeltaDelivery(offer.size, max(target.size - offer.size, 0), None)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
