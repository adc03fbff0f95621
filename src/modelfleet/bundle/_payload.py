"""Payload files of a bundle being built: staging, hashing, signing and the atomic write.

Files are copied and hashed in ``chunk_bytes`` pieces, so building a bundle around
a large model never holds the model in Python memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from modelfleet.bundle._container import write_bundle
from modelfleet.bundle._manifest import FileEntry, Manifest, Preprocessing
from modelfleet.bundle._options import validated
from modelfleet.bundle._signing import SignatureEnvelope, SigningKey
from modelfleet.config import BundleLimits
from modelfleet.errors import BuildError

__all__ = ["PREPROCESS_MEMBER", "hash_payload", "sign_and_write", "stage_model", "stage_preprocess"]

PREPROCESS_MEMBER = "preprocess.json"
_MAX_PREPROCESS_BYTES = 1024 * 1024

Progress = Callable[[int, int], None]


def stage_model(model: Path, dest: Path, chunk_bytes: int) -> Path:
    """Copy the model into the build directory, so what is measured is exactly what ships.

    Raises:
        BuildError: ``bad_model`` when the model cannot be read.
    """
    try:
        source = model.open("rb")
    except OSError as exc:
        msg = f"cannot read model {model}: {exc.strerror or exc}"
        raise BuildError(msg, code="bad_model") from None
    with source, dest.open("xb") as sink:
        while chunk := source.read(chunk_bytes):
            sink.write(chunk)
    return dest


def stage_preprocess(path: Path, dest: Path) -> Preprocessing:
    """Check a preprocessing spec (a JSON object with ``id`` and ``version``) and stage its exact bytes.

    Raises:
        BuildError: ``bad_preprocess`` (unreadable, too large, not a JSON object) or the
            schema's code for a bad ``id`` / ``version``.
    """
    data = _read_bounded(path, _MAX_PREPROCESS_BYTES)
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"preprocess file {path} is not JSON: {exc}"
        raise BuildError(msg, code="bad_preprocess") from None
    if not isinstance(document, dict):
        msg = f"preprocess file {path} must hold a JSON object with 'id' and 'version'"
        raise BuildError(msg, code="bad_preprocess")
    where = f"preprocess file {path}"
    spec = validated(Preprocessing, where, id=document.get("id"), version=document.get("version"), file=dest.name)
    dest.write_bytes(data)
    return spec


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        msg = f"cannot read preprocess file {path}: {exc.strerror or exc}"
        raise BuildError(msg, code="bad_preprocess") from None
    if len(data) > limit:
        msg = f"preprocess file {path} is larger than {limit} bytes"
        raise BuildError(msg, code="bad_preprocess")
    return data


def hash_payload(payload: Mapping[str, Path], limits: BundleLimits, progress: Progress) -> tuple[FileEntry, ...]:
    """Return the sorted file entries (size, streamed sha256) after checking the bundle limits.

    Raises:
        BuildError: ``too_large`` when a reader with ``limits`` would refuse the bundle.
    """
    sizes = {name: path.stat().st_size for name, path in payload.items()}
    _check_sizes(sizes, limits)
    total, done = sum(sizes.values()), 0
    entries = []
    for name in sorted(payload):
        digest = hashlib.sha256()
        with payload[name].open("rb") as handle:
            while chunk := handle.read(limits.chunk_bytes):
                digest.update(chunk)
                done += len(chunk)
                progress(done, total)
        entries.append(FileEntry(path=name, size=sizes[name], sha256=digest.hexdigest()))
    return tuple(entries)


def _check_sizes(sizes: Mapping[str, int], limits: BundleLimits) -> None:
    if len(sizes) > limits.max_members:
        msg = f"{len(sizes)} payload files; bundles allow at most {limits.max_members}"
        raise BuildError(msg, code="too_large")
    for name, size in sizes.items():
        if size > limits.max_member_bytes:
            msg = f"{name} is {size} bytes; bundles allow at most {limits.max_member_bytes} per file"
            raise BuildError(msg, code="too_large")
    if sum(sizes.values()) > limits.max_total_bytes:
        msg = f"the payload is {sum(sizes.values())} bytes; bundles allow at most {limits.max_total_bytes}"
        raise BuildError(msg, code="too_large")


def sign_and_write(
    out: Path, manifest: Manifest, signers: Sequence[SigningKey], payload: dict[str, Path], limits: BundleLimits
) -> None:
    """Sign the canonical manifest with every key and write the bundle atomically.

    Raises:
        BuildError: ``too_large`` (manifest above the readers' limit) or ``write_failed``.
    """
    manifest_bytes = manifest.to_bytes()
    if len(manifest_bytes) > limits.max_manifest_bytes:
        size, limit = len(manifest_bytes), limits.max_manifest_bytes
        msg = f"the manifest is {size} bytes; readers accept {limit} (use fewer histogram bins)"
        raise BuildError(msg, code="too_large")
    envelope = SignatureEnvelope.of(key.sign(manifest_bytes) for key in signers)
    try:
        write_bundle(out, manifest, envelope, payload, chunk_bytes=limits.chunk_bytes)
    except OSError as exc:
        msg = f"cannot write {out}: {exc.strerror or exc}"
        raise BuildError(msg, code="write_failed") from None
