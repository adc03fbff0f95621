"""The slot store: content-addressed, read-only model versions and the ``current``/``previous`` links.

Layout under the agent's root (DESIGN §4, RAUC's artifact repositories)::

    models/<name>/versions/<version>-<sha256[:12]>/   payload + manifest.json + manifest.sig, 0444/0555
    models/<name>/current  -> versions/<slot>        what the Predictor loads
    models/<name>/previous -> versions/<slot>        what a rollback restores
    models/<name>/candidate -> versions/<slot>       a shadow or time-slice candidate (never current)
    models/<name>/downloads/                         bundles being fetched
    models/<name>/journal.json                       the install journal

Publishing extracts into a dot-named staging directory inside ``versions/``, fsyncs
every file and the directory, and renames it into place, so a version directory
exists complete or not at all. A link moves by creating a temp symlink and
``os.replace``-ing it over the old one, never unlink-then-link, so a reader always
finds a model. Readers hold a shared ``flock`` on the version directory they use;
garbage collection takes an exclusive, non-blocking one and skips a busy version.
Everything whose name starts with a dot is a leftover of an interrupted step and is
removed by :meth:`SlotStore.recover`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelfleet._closing import Closeable
from modelfleet.agent._update import CrashPoint
from modelfleet.bundle import Manifest, TrustedKeys, parse_manifest, read_bundle, verify_signatures
from modelfleet.config import BundleLimits
from modelfleet.errors import BundleFormatError, HashMismatchError, ManifestError, NotFoundError

__all__ = [
    "CANDIDATE",
    "CURRENT",
    "DOWNLOADS",
    "MANIFEST_FILE",
    "PREVIOUS",
    "SIGNATURE_FILE",
    "VERSIONS",
    "Checkpoint",
    "Slot",
    "SlotHandle",
    "SlotStore",
    "fsync_dir",
    "replace_durably",
    "slot_name",
]

logger = logging.getLogger(__name__)

VERSIONS = "versions"
DOWNLOADS = "downloads"
CURRENT = "current"
PREVIOUS = "previous"
CANDIDATE = "candidate"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
_FILE_MODE = 0o444
_DIR_MODE = 0o555
_OPEN_ATTEMPTS = 16

Checkpoint = Callable[[CrashPoint], None]
"""Called at each named step; the crash tests make it SIGKILL the process."""


def _no_checkpoint(point: CrashPoint) -> None:
    """Checkpoint for normal operation: nothing happens."""


def slot_name(version: str, sha256: str) -> str:
    """The directory name of a version: ``<version>-<sha256[:12]>``."""
    return f"{version}-{sha256[:12]}"


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (renames, new links) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Slot:
    """One published version of a model."""

    model: str
    name: str
    path: Path

    def manifest(self) -> Manifest:
        """The verified-at-publish manifest stored with the version."""
        return parse_manifest((self.path / MANIFEST_FILE).read_bytes())


class SlotHandle(Closeable):
    """An open version: a shared ``flock`` on its directory keeps garbage collection away.

    Use as a context manager, or call :meth:`close`. ``path`` stays valid while open.
    """

    def __init__(self, slot: Slot, fd: int) -> None:
        self.slot = slot
        self.path = slot.path
        self.manifest = slot.manifest()
        self._fd: int | None = fd

    @property
    def model_path(self) -> Path:
        """The model file of this version."""
        return self.path / self.manifest.model.file

    def close(self) -> None:
        """Release the lock; the version may be collected afterwards."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SlotStore:
    """Published versions of every model under ``root/models``.

    Args:
        root: the agent's data directory.
        keep: how many versions of a model to retain (``current`` and ``previous`` always are).
        limits: bounds for reading bundles.
        checkpoint: called at each named step (crash tests).
    """

    def __init__(
        self, root: Path, *, keep: int = 3, limits: BundleLimits | None = None, checkpoint: Checkpoint | None = None
    ) -> None:
        if keep < 1:
            msg = f"keep must be at least 1, got {keep}"
            raise ValueError(msg)
        self.root = root
        self.keep = keep
        self.limits = limits or BundleLimits()
        self._checkpoint = checkpoint or _no_checkpoint

    # ------------------------------------------------------------ layout

    def model_dir(self, model: str) -> Path:
        """The directory of one model."""
        return self.root / "models" / model

    def versions_dir(self, model: str) -> Path:
        """Where the versions of one model live (created on demand)."""
        path = self.model_dir(model) / VERSIONS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def downloads_dir(self, model: str) -> Path:
        """Where bundles of one model are downloaded (created on demand)."""
        path = self.model_dir(model) / DOWNLOADS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def models(self) -> list[str]:
        """Every model with a directory in the store."""
        base = self.root / "models"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def slot(self, model: str, name: str) -> Slot:
        """The slot called ``name`` (it may not exist)."""
        return Slot(model, name, self.model_dir(model) / VERSIONS / name)

    def exists(self, model: str, name: str) -> bool:
        """Is version ``name`` published."""
        return self.slot(model, name).path.is_dir()

    def versions(self, model: str) -> list[Slot]:
        """Published versions, newest publish first."""
        directory = self.model_dir(model) / VERSIONS
        if not directory.is_dir():
            return []
        entries = [p for p in directory.iterdir() if not p.name.startswith(".") and p.is_dir()]
        entries.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        return [Slot(model, p.name, p) for p in entries]

    def link(self, model: str, which: str) -> str | None:
        """The slot name ``current``, ``previous`` or ``candidate`` points at; ``None`` when unset."""
        try:
            target = (self.model_dir(model) / which).readlink()
        except FileNotFoundError:
            return None
        return target.name

    def current(self, model: str) -> Slot | None:
        """The version in use, if any."""
        name = self.link(model, CURRENT)
        return None if name is None else self.slot(model, name)

    def previous(self, model: str) -> Slot | None:
        """The version a rollback would restore, if any."""
        name = self.link(model, PREVIOUS)
        return None if name is None else self.slot(model, name)

    # ------------------------------------------------------------ writer lock

    @contextlib.contextmanager
    def lock(self, model: str) -> Iterator[None]:
        """Hold the model's writer lock: one installer at a time changes links and versions."""
        directory = self.model_dir(model)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ publishing

    def publish(self, model: str, bundle: Path, trusted: TrustedKeys, *, version: str, sha256: str) -> Slot:
        """Verify ``bundle`` and publish it as a read-only version; idempotent.

        Raises:
            BundleError: the bundle is refused (format, signatures, hashes).
            ManifestError: ``identity``: the bundle is not ``model`` at ``version``.
            OSError: the disk failed (``ENOSPC``); nothing is left behind.
        """
        slot = self.slot(model, slot_name(version, sha256))
        if slot.path.is_dir():
            return slot
        staging = slot.path.parent / f".stage-{slot.name}"
        remove_tree(staging)
        self.versions_dir(model)
        verified = read_bundle(bundle, trusted, extract_to=staging, limits=self.limits)
        try:
            _check_identity(verified.manifest, model, version)
            self._checkpoint(CrashPoint.AFTER_VERIFY)
            _write_durably(staging / MANIFEST_FILE, verified.manifest_bytes)
            _write_durably(staging / SIGNATURE_FILE, verified.signature_bytes)
            _seal_files(staging)
            self._checkpoint(CrashPoint.MID_PUBLISH)
            fsync_dir(staging)
            staging.chmod(_DIR_MODE)
            staging.rename(slot.path)
            fsync_dir(slot.path.parent)
        except BaseException:
            remove_tree(staging)
            raise
        self._checkpoint(CrashPoint.AFTER_PUBLISH)
        return slot

    def verify(self, slot: Slot, trusted: TrustedKeys) -> Manifest:
        """Re-check a published version: signatures, the exact file set, every size and sha256.

        Raises:
            SignatureError, ManifestError: the stored manifest is no longer trusted.
            BundleFormatError: ``slot_files``: files are missing or extra.
            HashMismatchError: a file changed since it was published.
        """
        manifest_bytes = (slot.path / MANIFEST_FILE).read_bytes()
        verify_signatures(manifest_bytes, (slot.path / SIGNATURE_FILE).read_bytes(), trusted, self.limits)
        manifest = parse_manifest(manifest_bytes)
        present = {p.name for p in slot.path.iterdir()} - {MANIFEST_FILE, SIGNATURE_FILE}
        expected = {entry.path for entry in manifest.files}
        if present != expected:
            msg = f"{slot.path} holds {sorted(present)}, the manifest lists {sorted(expected)}"
            raise BundleFormatError(msg, code="slot_files")
        for entry in manifest.files:
            _check_file(slot.path / entry.path, entry.size, entry.sha256, self.limits.chunk_bytes)
        return manifest

    # ------------------------------------------------------------ links

    def switch(self, model: str, name: str, previous: str | None) -> None:
        """Make ``name`` current and ``previous`` the fallback; idempotent.

        ``previous`` moves first: at every instant ``previous`` is the version a
        rollback should restore and ``current`` is a complete version.
        """
        self._checkpoint(CrashPoint.BEFORE_SWITCH)
        if previous is not None and previous != name:
            self._point(model, PREVIOUS, previous)
        self._checkpoint(CrashPoint.BETWEEN_SYMLINKS)
        self._point(model, CURRENT, name)

    def restore(self, model: str, current: str | None, previous: str | None) -> None:
        """Put ``current`` and ``previous`` back as they were before an install; idempotent.

        ``current`` moves first, so the model that ran before is in use as early as
        possible. With no ``current`` to restore (a first install), the link is removed:
        the device runs nothing, as before.
        """
        self._point(model, CURRENT, current)
        self._checkpoint(CrashPoint.MID_ROLLBACK)
        self._point(model, PREVIOUS, previous)

    def point(self, model: str, link: str, name: str | None) -> None:
        """Atomically point ``link`` (``candidate``) at version ``name``, or remove it for ``None``; idempotent."""
        self._point(model, link, name)

    def _point(self, model: str, link: str, name: str | None) -> None:
        """Atomically point ``link`` at version ``name`` (temp symlink + ``os.replace``)."""
        directory = self.model_dir(model)
        path = directory / link
        if name is None:
            if path.is_symlink():
                path.unlink()
                fsync_dir(directory)
            return
        target = Path(VERSIONS, name)
        with contextlib.suppress(FileNotFoundError):
            if path.readlink() == target:
                return
        temp = directory / f".{link}.{secrets.token_hex(6)}.tmp"
        temp.symlink_to(target)
        try:
            temp.replace(path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(directory)

    # ------------------------------------------------------------ readers

    def open_current(self, model: str) -> SlotHandle:
        """Open the current version and hold it against garbage collection.

        Raises:
            NotFoundError: ``no_current``: the model has no current version.
        """
        return self.open(model, None)

    def open(self, model: str, name: str | None) -> SlotHandle:
        """Open version ``name`` (``None``: whatever is current) under a shared lock.

        Raises:
            NotFoundError: the version does not exist (``no_version``) or nothing is current (``no_current``).
        """
        for _ in range(_OPEN_ATTEMPTS):
            wanted = name or self.link(model, CURRENT)
            if wanted is None:
                msg = f"model {model!r} has no current version"
                raise NotFoundError(msg, code="no_current")
            handle = self._try_open(self.slot(model, wanted))
            if handle is not None:
                return handle
            if name is not None:
                break
        msg = f"version {name or 'current'} of model {model!r} does not exist"
        raise NotFoundError(msg, code="no_version")

    @staticmethod
    def _try_open(slot: Slot) -> SlotHandle | None:
        """Lock ``slot`` shared; ``None`` when it vanished before the lock was held."""
        try:
            fd = os.open(slot.path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            held, now = os.fstat(fd), slot.path.stat()
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return SlotHandle(slot, fd)
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    # ------------------------------------------------------------ cleaning

    def gc(self, model: str, protect: Collection[str] = ()) -> list[str]:
        """Remove versions beyond :attr:`keep`, oldest first; never a linked, protected or open one."""
        keep = {self.link(model, CURRENT), self.link(model, PREVIOUS), self.link(model, CANDIDATE), *protect} - {None}
        slots = self.versions(model)
        room = max(self.keep - sum(1 for s in slots if s.name in keep), 0)
        candidates = [s for s in slots if s.name not in keep][room:]
        return [slot.name for slot in candidates if self._remove_if_idle(slot)]

    def _remove_if_idle(self, slot: Slot) -> bool:
        """Delete ``slot`` unless a reader holds it; rename first so readers never see half a version."""
        fd = os.open(slot.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("version %s of %s is open; kept", slot.name, slot.model)
                return False
            trash = slot.path.parent / f".trash-{slot.name}-{secrets.token_hex(4)}"
            slot.path.rename(trash)
            fsync_dir(slot.path.parent)
        finally:
            os.close(fd)
        self._checkpoint(CrashPoint.MID_GC)
        remove_tree(trash)
        return True

    def recover(self, model: str, keep_downloads: Collection[str] = ()) -> list[Path]:
        """Remove what interrupted steps left: dot-named temps, staging and trash, stale downloads.

        Args:
            model: the model to clean.
            keep_downloads: sha256 of bundles whose download may be resumed.
        """
        directory = self.model_dir(model)
        if not directory.is_dir():
            return []
        leftovers = [p for p in directory.iterdir() if p.name.startswith(".")]
        for sub in (VERSIONS, DOWNLOADS):
            if (directory / sub).is_dir():
                leftovers += [p for p in (directory / sub).iterdir() if p.name.startswith(".")]
        if (directory / DOWNLOADS).is_dir():
            leftovers += [
                p for p in (directory / DOWNLOADS).iterdir() if p.name.split(".", 1)[0] not in set(keep_downloads)
            ]
        for path in leftovers:
            remove_tree(path)
        if leftovers:
            fsync_dir(directory)
            logger.info("removed %d leftovers of interrupted steps for %s", len(leftovers), model)
        return leftovers


def remove_tree(path: Path) -> None:
    """Remove a file, link or directory tree, including read-only published ones; absent is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.is_dir():
        return
    for directory, _, _ in os.walk(path):
        Path(directory).chmod(stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


def _check_identity(manifest: Manifest, model: str, version: str) -> None:
    """The verified bundle must be the model and version the journal asked for."""
    if (manifest.name, manifest.version) != (model, version):
        msg = f"bundle is {manifest.name} {manifest.version}, but {model} {version} was assigned"
        raise ManifestError(msg, code="identity")


def replace_durably(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably: temp file, fsync, rename, fsync the directory.

    The file gets ``mode`` when given (else the temp file's 0600) before any byte is written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_durably(path: Path, data: bytes) -> None:
    """Write a new file and fsync it."""
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _seal_files(directory: Path) -> None:
    """Make every file read-only and durable (payload files were fsynced by the reader)."""
    for path in directory.iterdir():
        path.chmod(_FILE_MODE)


def _check_file(path: Path, size: int, sha256: str, chunk_bytes: int) -> None:
    """The file at ``path`` must have exactly ``size`` bytes hashing to ``sha256``."""
    digest = hashlib.sha256()
    seen = 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
            seen += len(chunk)
    if seen != size or digest.hexdigest() != sha256:
        msg = f"{path} no longer matches its manifest ({seen} bytes, expected {size})"
        raise HashMismatchError(msg, code="slot_changed")
