"""Content-addressed blob storage for bundles and deltas.

A blob is named by the sha256 of its bytes, so storing the same content twice
is a no-op and a stored file never changes. The filesystem backend writes to a
temporary file, fsyncs it, renames it into ``root/sha256/ab/<hex>`` and fsyncs
the directory, so a crash leaves either the whole blob or none of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from modelfleet.errors import NotFoundError, TooLargeError

__all__ = ["BlobRef", "BlobStore", "FilesystemBlobStore"]

CHUNK_BYTES = 1024 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BLOB_MODE = 0o440  # read-only: a stored blob never changes


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored blob: its sha256 (lowercase hex) and its size in bytes."""

    sha256: str
    size: int


class BlobStore(Protocol):
    """Where bundle and delta bytes live, addressed by their sha256."""

    def put_file(self, path: Path) -> BlobRef:
        """Store a copy of a local file."""
        ...

    def put_stream(self, chunks: Iterable[bytes] | BinaryIO, *, max_bytes: int) -> BlobRef:
        """Store bytes from an iterable of chunks or a binary file, refusing more than ``max_bytes``."""
        ...

    def exists(self, sha256: str) -> bool:
        """Tell whether a blob is stored."""
        ...

    def size(self, sha256: str) -> int:
        """Return a stored blob's size in bytes."""
        ...

    def path(self, sha256: str) -> Path:
        """Return a local file holding the blob (lets the server answer Range requests)."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading."""
        ...

    def delete(self, sha256: str) -> None:
        """Remove a blob; removing one that is not stored is not an error."""
        ...


class FilesystemBlobStore:
    """Blobs as read-only files under ``root/sha256/ab/<hex>``; safe for threads and processes.

    Args:
        root: directory that holds the blobs (created if missing).
        chunk_bytes: read/hash/write unit; bounds memory per upload.
    """

    def __init__(self, root: Path, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes <= 0:
            msg = f"chunk_bytes must be positive, got {chunk_bytes}"
            raise ValueError(msg)
        self.root = root
        self._chunk_bytes = chunk_bytes
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def put_file(self, path: Path) -> BlobRef:
        """Store a copy of the local file ``path`` (trusted, so unbounded)."""
        with path.open("rb") as source:
            return self._store(_read_chunks(source, self._chunk_bytes), max_bytes=None)

    def put_stream(self, chunks: Iterable[bytes] | BinaryIO, *, max_bytes: int) -> BlobRef:
        """Store bytes from outside, hashing while writing.

        Raises:
            TooLargeError: more than ``max_bytes`` arrived; nothing is left behind.
        """
        if max_bytes < 0:
            msg = f"max_bytes must not be negative, got {max_bytes}"
            raise ValueError(msg)
        if isinstance(chunks, bytes | bytearray | memoryview):
            msg = "put_stream takes an iterable of chunks or a binary file, not bytes (wrap it: [data])"
            raise TypeError(msg)
        if hasattr(chunks, "read"):
            chunks = _read_chunks(cast("BinaryIO", chunks), self._chunk_bytes)
        return self._store(chunks, max_bytes=max_bytes)

    def exists(self, sha256: str) -> bool:
        """Tell whether the blob ``sha256`` is stored."""
        return self._blob_path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Return the size of the blob ``sha256``.

        Raises:
            NotFoundError: no such blob.
        """
        return self.path(sha256).stat().st_size

    def path(self, sha256: str) -> Path:
        """Return the file holding the blob ``sha256``; do not write to it.

        Raises:
            NotFoundError: no such blob.
        """
        path = self._blob_path(sha256)
        if not path.is_file():
            msg = f"no blob with sha256 {sha256}"
            raise NotFoundError(msg, code="blob_not_found")
        return path

    def open(self, sha256: str) -> BinaryIO:
        """Open the blob ``sha256`` for reading.

        Raises:
            NotFoundError: no such blob.
        """
        try:
            return self._blob_path(sha256).open("rb")
        except FileNotFoundError:
            msg = f"no blob with sha256 {sha256}"
            raise NotFoundError(msg, code="blob_not_found") from None

    def delete(self, sha256: str) -> None:
        """Remove the blob ``sha256`` if it is stored (readers that hold it open keep reading)."""
        path = self._blob_path(sha256)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)

    def _blob_path(self, sha256: str) -> Path:
        """Map a sha256 to its file; anything but 64 lowercase hex digits is a caller error."""
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            msg = f"a blob name is 64 lowercase hex digits, got {sha256!r}"
            raise ValueError(msg)
        return self.root / "sha256" / sha256[:2] / sha256

    def _store(self, chunks: Iterable[bytes], *, max_bytes: int | None) -> BlobRef:
        """Write ``chunks`` to a temporary file beside the blobs, then move it to its content address."""
        descriptor, name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        temporary = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                ref = _write(chunks, handle, max_bytes=max_bytes)
            self._publish(temporary, self._blob_path(ref.sha256))
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return ref

    def _publish(self, temporary: Path, final: Path) -> None:
        """Rename a complete, fsynced temporary file to ``final``, or drop it if ``final`` exists."""
        if final.is_file():
            temporary.unlink()
            return
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(final.parent.parent)
        temporary.chmod(_BLOB_MODE)
        # Two writers of the same content may both get here; either rename leaves the same bytes.
        temporary.replace(final)
        _fsync_dir(final.parent)


def _write(chunks: Iterable[bytes], handle: BinaryIO, *, max_bytes: int | None) -> BlobRef:
    """Copy ``chunks`` to ``handle`` and fsync it, hashing on the way and enforcing the bound."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            msg = f"the upload exceeds the limit of {max_bytes} bytes"
            raise TooLargeError(msg, code="blob_too_large")
        digest.update(chunk)
        handle.write(chunk)
    handle.flush()
    os.fsync(handle.fileno())
    return BlobRef(sha256=digest.hexdigest(), size=size)


def _read_chunks(source: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """Yield a binary file's bytes in chunks of at most ``chunk_bytes``."""
    while chunk := source.read(chunk_bytes):
        yield chunk


def _fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new file, an unlink) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
