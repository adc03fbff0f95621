"""The ``.mfb`` container: a strict, streamed, uncompressed ustar archive.

Layout (ADR 0001): ``manifest.json``, ``manifest.sig``, then each payload file in
the order of ``manifest.files``, then two zero blocks. Only regular files with
flat names are allowed; there is nothing to extract outside a target because no
name may hold a ``/``. The reader checks signatures *before* it reads any
payload byte, hashes payload in fixed-size chunks (bounded memory), and refuses
with a distinct ``code`` for every departure from the layout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from modelfleet.bundle._manifest import Manifest, parse_manifest
from modelfleet.bundle._signing import SignatureEnvelope, TrustedKeys, parse_envelope, verify_signatures
from modelfleet.config import BundleLimits
from modelfleet.errors import BundleFormatError, HashMismatchError

__all__ = ["BundleHeader", "VerifiedBundle", "read_bundle", "read_header", "write_bundle"]

BLOCK = 512
RECORD = 20 * BLOCK  # tar's historical record size; zero padding up to it is tolerated
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
_REGULAR = (b"0", b"\x00")
_ZERO_BLOCK = b"\x00" * BLOCK
_TYPE_CODES = {b"1": "hardlink_member", b"2": "symlink_member"}


# --------------------------------------------------------------------- writing


def _octal(value: int, width: int) -> bytes:
    text = f"{value:0{width - 1}o}".encode("ascii")
    if len(text) > width - 1:
        msg = f"value {value} does not fit a {width}-byte tar field"
        raise ValueError(msg)
    return text + b"\x00"


def tar_header(name: str, size: int, *, typeflag: bytes = b"0", linkname: str = "", prefix: str = "") -> bytes:
    """Return a deterministic ustar header block (mtime 0, uid 0, mode 0644)."""
    raw_name, raw_link, raw_prefix = (s.encode("utf-8") for s in (name, linkname, prefix))
    if len(raw_name) > 100 or len(raw_link) > 100 or len(raw_prefix) > 155:  # noqa: PLR2004 - ustar field widths
        msg = f"member name {name!r} is too long for ustar"
        raise ValueError(msg)
    header = bytearray(BLOCK)
    header[0 : len(raw_name)] = raw_name
    header[100:108] = _octal(0o644, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(0, 12)
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[157 : 157 + len(raw_link)] = raw_link
    header[257:263] = b"ustar\x00"
    header[263:265] = b"00"
    header[345 : 345 + len(raw_prefix)] = raw_prefix
    header[148:156] = f"{sum(header):06o}".encode("ascii") + b"\x00 "
    return bytes(header)


def _padding(size: int) -> bytes:
    return b"\x00" * (-size % BLOCK)


def write_bundle(
    out: Path,
    manifest: Manifest,
    envelope: SignatureEnvelope,
    payload: dict[str, Path],
    *,
    chunk_bytes: int = 1 << 20,
) -> None:
    """Write a bundle atomically: a temp file in ``out``'s directory, fsync, rename.

    Args:
        out: where the ``.mfb`` goes; never left half-written.
        manifest: the manifest whose ``files`` list the payload (order and hashes).
        envelope: the signatures over ``manifest.to_bytes()``.
        payload: member name -> local file holding its bytes.
        chunk_bytes: copy unit, which bounds memory.

    Raises:
        ValueError: the payload does not match the manifest's files.
    """
    if set(payload) != {f.path for f in manifest.files}:
        msg = f"payload members {sorted(payload)} differ from manifest files {[f.path for f in manifest.files]}"
        raise ValueError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for name, data in ((MANIFEST_MEMBER, manifest.to_bytes()), (SIGNATURE_MEMBER, envelope.to_bytes())):
                handle.write(tar_header(name, len(data)) + data + _padding(len(data)))
            for entry in manifest.files:
                handle.write(tar_header(entry.path, entry.size))
                _copy(payload[entry.path], handle, entry.size, chunk_bytes)
                handle.write(_padding(entry.size))
            handle.write(b"\x00" * (2 * BLOCK))
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(out)
        _fsync_dir(out.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _copy(source: Path, handle: BinaryIO, size: int, chunk_bytes: int) -> None:
    written = 0
    with source.open("rb") as src:
        while chunk := src.read(chunk_bytes):
            handle.write(chunk)
            written += len(chunk)
    if written != size:
        msg = f"{source} is {written} bytes but the manifest says {size}"
        raise ValueError(msg)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    size: int


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        msg = f"bundle is truncated: it ends inside {what}"
        raise BundleFormatError(msg, code="truncated")
    return data


def _parse_octal(field_bytes: bytes, what: str) -> int:
    text = field_bytes.rstrip(b"\x00 ").lstrip(b" ")
    if text.strip(b"01234567"):  # int() would also take a sign or '_': a size of -1 reads to the end
        msg = f"tar header field {what} is not an octal number"
        raise BundleFormatError(msg, code="bad_header")
    return int(text or b"0", 8)


def _check_name(name: str) -> None:
    if name.startswith("/"):
        msg = f"member {name!r} has an absolute path"
        raise BundleFormatError(msg, code="absolute_path")
    parts = name.split("/")
    if ".." in parts:
        msg = f"member {name!r} escapes the bundle with '..'"
        raise BundleFormatError(msg, code="path_traversal")
    if len(parts) > 1 or "\\" in name:
        msg = f"member {name!r} has a directory part; bundle members are flat"
        raise BundleFormatError(msg, code="nested_path")


def _next_member(stream: BinaryIO) -> _Member | None:
    """Read one header block; ``None`` at the end-of-archive marker."""
    block = _read_exact(stream, BLOCK, "a tar header")
    if block == _ZERO_BLOCK:
        if _read_exact(stream, BLOCK, "the end-of-archive marker") != _ZERO_BLOCK:
            raise BundleFormatError("data follows a lone zero block", code="trailing_data")
        return None
    stored = _parse_octal(block[148:156], "chksum")
    if stored != sum(block[:148]) + 8 * 0x20 + sum(block[156:]):
        raise BundleFormatError("tar header checksum does not match; the header is corrupt", code="bad_header")
    if block[257:263] != b"ustar\x00":
        raise BundleFormatError("member header is not ustar", code="bad_header")
    try:
        name = (block[345:500].rstrip(b"\x00") + b"/" if block[345] else b"").decode("utf-8")
        name += block[0:100].rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        raise BundleFormatError("member name is not UTF-8", code="bad_header") from None
    _check_name(name)
    typeflag = block[156:157]
    if typeflag in _TYPE_CODES:
        target = block[157:257].rstrip(b"\x00").decode("utf-8", "replace")
        msg = f"member {name!r} is a link to {target!r}; only regular files are allowed"
        raise BundleFormatError(msg, code=_TYPE_CODES[typeflag])
    if typeflag not in _REGULAR:
        msg = f"member {name!r} has tar type {typeflag!r}; only regular files are allowed"
        raise BundleFormatError(msg, code="unsupported_member_type")
    return _Member(name, _parse_octal(block[124:136], "size"))


def _read_small(stream: BinaryIO, member: _Member | None, expected: str, limit: int) -> bytes:
    if member is None:
        msg = f"bundle ends before {expected}"
        raise BundleFormatError(msg, code="missing_member")
    if member.name != expected:
        msg = f"expected {expected!r} here but found {member.name!r}; members are out of order"
        raise BundleFormatError(msg, code="member_order")
    if member.size > limit:
        msg = f"{expected} is {member.size} bytes; the limit is {limit}"
        raise BundleFormatError(msg, code="oversized_member")
    data = _read_exact(stream, member.size, expected)
    _read_padding(stream, member.size, expected)
    return data


def _read_padding(stream: BinaryIO, size: int, what: str) -> None:
    if _read_exact(stream, -size % BLOCK, f"the padding of {what}").strip(b"\x00"):
        msg = f"the padding after {what} is not zeros"
        raise BundleFormatError(msg, code="bad_padding")


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """The signed part of a bundle: manifest and signature envelope, unverified."""

    manifest: Manifest
    manifest_bytes: bytes
    envelope: SignatureEnvelope
    signature_bytes: bytes


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signatures, layout and payload hashes all checked out."""

    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes
    signed_by: frozenset[str]
    directory: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def _read_signed_part(stream: BinaryIO, limits: BundleLimits) -> tuple[bytes, bytes]:
    manifest_bytes = _read_small(stream, _next_member(stream), MANIFEST_MEMBER, limits.max_manifest_bytes)
    signature_bytes = _read_small(stream, _next_member(stream), SIGNATURE_MEMBER, limits.max_signature_bytes)
    return manifest_bytes, signature_bytes


@contextmanager
def _open(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, Path):
        with source.open("rb") as handle:
            yield handle
    else:
        yield source


def read_header(source: Path | BinaryIO, limits: BundleLimits | None = None) -> BundleHeader:
    """Read manifest and signatures without trusting them (for ``inspect``).

    Raises:
        BundleFormatError, ManifestError, SignatureError: the header is malformed.
    """
    limits = limits or BundleLimits()
    with _open(source) as stream:
        manifest_bytes, signature_bytes = _read_signed_part(stream, limits)
    return BundleHeader(
        parse_manifest(manifest_bytes), manifest_bytes, parse_envelope(signature_bytes), signature_bytes
    )


def _check_limits(manifest: Manifest, limits: BundleLimits) -> None:
    if len(manifest.files) > limits.max_members:
        msg = f"manifest lists {len(manifest.files)} files; the limit is {limits.max_members}"
        raise BundleFormatError(msg, code="too_many_members")
    for entry in manifest.files:
        if entry.size > limits.max_member_bytes:
            msg = f"{entry.path} is {entry.size} bytes; the limit is {limits.max_member_bytes}"
            raise BundleFormatError(msg, code="oversized_member")
    if manifest.payload_bytes > limits.max_total_bytes:
        msg = f"payload totals {manifest.payload_bytes} bytes; the limit is {limits.max_total_bytes}"
        raise BundleFormatError(msg, code="oversized_member")


def _stream_member(stream: BinaryIO, size: int, name: str, sink: BinaryIO | None, chunk_bytes: int) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        chunk = _read_exact(stream, min(chunk_bytes, remaining), f"member {name!r}")
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        remaining -= len(chunk)
    _read_padding(stream, size, repr(name))
    return digest.hexdigest()


def _read_payload(stream: BinaryIO, manifest: Manifest, workdir: Path | None, limits: BundleLimits) -> None:
    expected = [entry.path for entry in manifest.files]
    seen: set[str] = set()
    for entry in manifest.files:
        member = _next_member(stream)
        if member is None:
            missing = [name for name in expected if name not in seen]
            msg = f"bundle ends without {', '.join(missing)}"
            raise BundleFormatError(msg, code="missing_member")
        if member.name not in expected:
            msg = f"member {member.name!r} is not listed in the manifest"
            raise BundleFormatError(msg, code="unknown_member")
        if member.name in seen:
            msg = f"member {member.name!r} appears twice"
            raise BundleFormatError(msg, code="duplicate_member")
        if member.name != entry.path:
            msg = f"expected {entry.path!r} next but found {member.name!r}; members are out of order"
            raise BundleFormatError(msg, code="member_order")
        if member.size > entry.size:
            msg = f"{entry.path} is {member.size} bytes but the manifest says {entry.size}"
            raise BundleFormatError(msg, code="oversized_member")
        if member.size < entry.size:
            msg = f"{entry.path} is {member.size} bytes but the manifest says {entry.size}"
            raise HashMismatchError(msg, code="size_mismatch")
        seen.add(entry.path)
        if workdir is None:
            actual = _stream_member(stream, member.size, member.name, None, limits.chunk_bytes)
        else:
            with (workdir / entry.path).open("xb") as sink:
                actual = _stream_member(stream, member.size, member.name, sink, limits.chunk_bytes)
                sink.flush()
                os.fsync(sink.fileno())
        if actual != entry.sha256:
            msg = f"{entry.path}: sha256 {actual[:16]}… does not match the manifest's {entry.sha256[:16]}…"
            raise HashMismatchError(msg, code="hash_mismatch")
    _read_end(stream, seen)


def _read_end(stream: BinaryIO, seen: set[str]) -> None:
    member = _next_member(stream)
    if member is not None and member.name in seen:
        msg = f"member {member.name!r} appears twice"
        raise BundleFormatError(msg, code="duplicate_member")
    if member is not None:
        msg = f"member {member.name!r} is not listed in the manifest"
        raise BundleFormatError(msg, code="unknown_member")
    # Tools pad archives to a record with zeros; anything else after the end is appended data.
    tail = stream.read(RECORD + 1)
    if len(tail) > RECORD or tail.strip(b"\x00"):
        raise BundleFormatError("bytes follow the end of the archive", code="trailing_data")


def read_bundle(
    source: Path | BinaryIO,
    trusted: TrustedKeys,
    *,
    extract_to: Path | None = None,
    limits: BundleLimits | None = None,
) -> VerifiedBundle:
    """Verify a bundle and, if asked, extract its payload atomically.

    Order of checks: layout of the two signed members, signatures (before any
    payload byte is read), manifest schema, declared sizes against ``limits``,
    then each payload member streamed through sha256. With ``extract_to`` the
    files land in a temp directory beside it that is renamed into place only
    when everything verified; on any error nothing is left behind.

    Raises:
        BundleFormatError, ManifestError, SignatureError, HashMismatchError.
    """
    limits = limits or BundleLimits()
    if extract_to is not None and extract_to.exists():
        msg = f"extraction target {extract_to} already exists"
        raise FileExistsError(msg)
    with _open(source) as stream:
        manifest_bytes, signature_bytes = _read_signed_part(stream, limits)
        signed_by = verify_signatures(manifest_bytes, signature_bytes, trusted, limits)
        manifest = parse_manifest(manifest_bytes)
        _check_limits(manifest, limits)
        if extract_to is None:
            _read_payload(stream, manifest, None, limits)
            return VerifiedBundle(manifest, manifest_bytes, signature_bytes, signed_by)
        extract_to.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f".{extract_to.name}.", suffix=".partial", dir=extract_to.parent))
        try:
            _read_payload(stream, manifest, workdir, limits)
            _fsync_dir(workdir)
            workdir.rename(extract_to)
            _fsync_dir(extract_to.parent)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    files = {entry.path: extract_to / entry.path for entry in manifest.files}
    return VerifiedBundle(manifest, manifest_bytes, signature_bytes, signed_by, extract_to, files)


def member_names(manifest: Manifest) -> Sequence[str]:
    """Return every member name of the bundle in archive order."""
    return [MANIFEST_MEMBER, SIGNATURE_MEMBER, *(entry.path for entry in manifest.files)]
