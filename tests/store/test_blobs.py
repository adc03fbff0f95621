"""The filesystem blob store: content addressing, atomic and idempotent puts, bounds, concurrency."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.errors import NotFoundError, TooLargeError
from modelfleet.store import BlobRef, FilesystemBlobStore

HELLO = b"hello, fleet"
HELLO_SHA = hashlib.sha256(HELLO).hexdigest()
MISSING_SHA = "f" * 64


def stored_files(store: FilesystemBlobStore) -> list[Path]:
    """Every file under the store's root: blobs and any leftover temporary file."""
    return sorted(path for path in store.root.rglob("*") if path.is_file())


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_blob_lives_at_its_sha256(blob_store):
    ref = blob_store.put_stream([b"hello, ", b"fleet"], max_bytes=1024)
    assert ref == BlobRef(sha256=HELLO_SHA, size=len(HELLO))
    assert blob_store.path(HELLO_SHA) == blob_store.root / "sha256" / HELLO_SHA[:2] / HELLO_SHA
    assert blob_store.exists(HELLO_SHA)
    assert blob_store.size(HELLO_SHA) == len(HELLO)
    with blob_store.open(HELLO_SHA) as handle:
        assert handle.read() == HELLO


def test_storing_the_same_content_twice_keeps_one_blob(blob_store):
    first = blob_store.put_stream([HELLO], max_bytes=1024)
    second = blob_store.put_stream(chunked(HELLO, 3), max_bytes=1024)
    assert first == second
    assert stored_files(blob_store) == [blob_store.path(HELLO_SHA)]


def test_put_file_copies_a_local_file_and_leaves_it_alone(blob_store, tmp_path):
    source = tmp_path / "model.mfb"
    source.write_bytes(HELLO)
    assert blob_store.put_file(source) == BlobRef(HELLO_SHA, len(HELLO))
    assert source.read_bytes() == HELLO
    assert blob_store.path(HELLO_SHA).read_bytes() == HELLO


def test_an_empty_blob_is_a_blob(blob_store):
    ref = blob_store.put_stream([], max_bytes=0)
    assert ref == BlobRef(hashlib.sha256(b"").hexdigest(), 0)
    assert blob_store.size(ref.sha256) == 0


@pytest.mark.parametrize("kind", ["bytes_io", "file_on_disk"])
def test_put_stream_reads_a_binary_file_in_bounded_chunks(tmp_path, kind):
    store = FilesystemBlobStore(tmp_path / "blobs", chunk_bytes=7)
    data = os.urandom(1000)
    if kind == "bytes_io":
        ref = store.put_stream(io.BytesIO(data), max_bytes=len(data))
    else:
        (tmp_path / "upload").write_bytes(data)
        with (tmp_path / "upload").open("rb") as handle:
            ref = store.put_stream(handle, max_bytes=len(data))
    assert ref == BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    assert store.path(ref.sha256).read_bytes() == data


# --- bounds and failures leave nothing behind -----------------------------------------------


def test_exactly_max_bytes_is_accepted(blob_store):
    assert blob_store.put_stream(chunked(HELLO, 5), max_bytes=len(HELLO)).size == len(HELLO)


def test_beyond_max_bytes_is_refused_and_leaves_nothing_behind(blob_store):
    with pytest.raises(TooLargeError) as caught:
        blob_store.put_stream(chunked(HELLO, 5), max_bytes=len(HELLO) - 1)
    assert caught.value.code == "blob_too_large"
    assert str(len(HELLO) - 1) in str(caught.value)
    assert stored_files(blob_store) == []
    assert not blob_store.exists(HELLO_SHA)


def test_refusal_stops_reading_at_the_bound(blob_store):
    pulled: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            pulled.append(1)
            yield b"x" * 1024

    with pytest.raises(TooLargeError):
        blob_store.put_stream(endless(), max_bytes=10 * 1024)
    assert len(pulled) == 11


def test_a_source_that_fails_half_way_leaves_nothing_behind(blob_store):
    def broken() -> Iterator[bytes]:
        yield HELLO
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        blob_store.put_stream(broken(), max_bytes=1024)
    assert stored_files(blob_store) == []


def test_bytes_instead_of_chunks_is_a_caller_error(blob_store):
    with pytest.raises(TypeError, match="not bytes"):
        blob_store.put_stream(HELLO, max_bytes=1024)


# --- concurrency --------------------------------------------------------------------------


def test_concurrent_puts_of_the_same_content_store_it_once(blob_store):
    data = os.urandom(3 * 1024 * 1024)
    start = threading.Barrier(8)
    refs: list[BlobRef] = []
    failures: list[BaseException] = []

    def put() -> None:
        start.wait()
        try:
            refs.append(blob_store.put_stream(chunked(data, 64 * 1024), max_bytes=len(data)))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    expected = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    assert refs == [expected] * 8
    assert stored_files(blob_store) == [blob_store.path(expected.sha256)]
    assert blob_store.path(expected.sha256).read_bytes() == data


# --- reading, deleting, naming ------------------------------------------------------------


def test_stored_blobs_are_read_only(blob_store):
    blob_store.put_stream([HELLO], max_bytes=1024)
    mode = stat.S_IMODE(blob_store.path(HELLO_SHA).stat().st_mode)
    assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0


def test_delete_removes_a_blob_and_tolerates_a_missing_one(blob_store):
    blob_store.put_stream([HELLO], max_bytes=1024)
    blob_store.delete(HELLO_SHA)
    assert not blob_store.exists(HELLO_SHA)
    blob_store.delete(HELLO_SHA)
    blob_store.put_stream([HELLO], max_bytes=1024)
    assert blob_store.exists(HELLO_SHA)


def test_a_reader_keeps_reading_a_blob_deleted_under_it(blob_store):
    blob_store.put_stream([HELLO], max_bytes=1024)
    with blob_store.open(HELLO_SHA) as handle:
        blob_store.delete(HELLO_SHA)
        assert handle.read() == HELLO


@pytest.mark.parametrize("operation", ["size", "path", "open"])
def test_a_missing_blob_is_not_found(blob_store, operation):
    with pytest.raises(NotFoundError) as caught:
        getattr(blob_store, operation)(MISSING_SHA)
    assert caught.value.code == "blob_not_found"
    assert not blob_store.exists(MISSING_SHA)


BAD_NAMES = {
    "traversal": "../../etc/passwd",
    "uppercase": HELLO_SHA.upper(),
    "short": HELLO_SHA[:63],
    "long": HELLO_SHA + "0",
    "slash": HELLO_SHA[:32] + "/" + HELLO_SHA[33:],
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
@pytest.mark.parametrize("operation", ["exists", "size", "path", "open", "delete"])
def test_a_name_that_is_not_a_sha256_is_a_caller_error(blob_store, operation, name):
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        getattr(blob_store, operation)(name)
