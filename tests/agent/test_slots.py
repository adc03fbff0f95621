"""The slot store: atomic publish, atomic link swaps, read-only versions, locks that keep open versions alive."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from modelfleet.agent import SlotStore
from modelfleet.errors import BundleFormatError, HashMismatchError, ManifestError, NotFoundError

MODEL = "digits"
SWAPS = 2000


@pytest.fixture
def store(tmp_path) -> SlotStore:
    return SlotStore(tmp_path, keep=2)


def publish(store: SlotStore, kit, bundle):
    return store.publish(MODEL, bundle.path, kit.bundles.trusted, version=bundle.version, sha256=bundle.sha256)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ publishing


def test_a_published_version_holds_the_payload_and_its_signed_manifest(store, kit):
    slot = publish(store, kit, kit.bundles.v1)

    assert slot.name == kit.bundles.v1.slot
    assert entries(slot.path) == ["golden.npz", "manifest.json", "manifest.sig", "model.onnx"]
    assert store.verify(slot, kit.bundles.trusted) == kit.bundles.v1.manifest


def test_a_published_version_is_read_only(store, kit):
    slot = publish(store, kit, kit.bundles.v1)

    assert stat.S_IMODE(slot.path.stat().st_mode) == 0o555
    assert {stat.S_IMODE(p.stat().st_mode) for p in slot.path.iterdir()} == {0o444}


def test_publishing_twice_is_a_no_op(store, kit):
    first = publish(store, kit, kit.bundles.v1)
    inode = first.path.stat().st_ino

    assert publish(store, kit, kit.bundles.v1).path.stat().st_ino == inode


def test_a_bundle_that_fails_verification_leaves_nothing_behind(store, kit, tmp_path):
    broken = tmp_path / "broken.mfb"
    data = bytearray(kit.bundles.v2.data)
    data[len(data.rstrip(b"\x00")) - 1] ^= 1
    broken.write_bytes(bytes(data))

    with pytest.raises(HashMismatchError):
        store.publish(MODEL, broken, kit.bundles.trusted, version="2.0.0", sha256="0" * 64)
    assert entries(store.versions_dir(MODEL)) == []


def test_a_bundle_that_is_not_the_assigned_version_is_refused(store, kit):
    with pytest.raises(ManifestError, match=r"but digits 9\.9\.9 was assigned") as caught:
        store.publish(MODEL, kit.bundles.v1.path, kit.bundles.trusted, version="9.9.9", sha256=kit.bundles.v1.sha256)
    assert caught.value.code == "identity"
    assert entries(store.versions_dir(MODEL)) == []


def test_verify_notices_a_changed_file(store, kit):
    slot = publish(store, kit, kit.bundles.v1)
    model = slot.path / "model.onnx"
    slot.path.chmod(0o755)
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")

    with pytest.raises(HashMismatchError, match="no longer matches"):
        store.verify(slot, kit.bundles.trusted)


def test_verify_notices_an_extra_file(store, kit):
    slot = publish(store, kit, kit.bundles.v1)
    slot.path.chmod(0o755)
    (slot.path / "model.onnx.orig").write_bytes(b"x")

    with pytest.raises(BundleFormatError) as caught:
        store.verify(slot, kit.bundles.trusted)
    assert caught.value.code == "slot_files"


# ------------------------------------------------------------------ links


def test_switch_moves_previous_then_current(store, kit):
    v1, v2 = publish(store, kit, kit.bundles.v1), publish(store, kit, kit.bundles.v2)
    store.switch(MODEL, v1.name, previous=None)
    store.switch(MODEL, v2.name, previous=v1.name)

    assert (store.link(MODEL, "current"), store.link(MODEL, "previous")) == (v2.name, v1.name)
    assert (store.model_dir(MODEL) / "current").readlink() == Path("versions", v2.name)


def test_restore_puts_both_links_back(store, kit):
    v1, v2 = publish(store, kit, kit.bundles.v1), publish(store, kit, kit.bundles.v2)
    store.switch(MODEL, v1.name, previous=None)
    store.switch(MODEL, v2.name, previous=v1.name)

    store.restore(MODEL, v1.name, None)

    assert (store.link(MODEL, "current"), store.link(MODEL, "previous")) == (v1.name, None)


def test_restoring_a_first_install_leaves_no_current(store, kit):
    v1 = publish(store, kit, kit.bundles.v1)
    store.switch(MODEL, v1.name, previous=None)

    store.restore(MODEL, None, None)

    with pytest.raises(NotFoundError) as caught:
        store.open_current(MODEL)
    assert caught.value.code == "no_current"


def test_link_swaps_leave_no_temporary_links(store, kit):
    v1, v2 = publish(store, kit, kit.bundles.v1), publish(store, kit, kit.bundles.v2)
    for n in range(20):
        store.switch(MODEL, (v1, v2)[n % 2].name, previous=(v2, v1)[n % 2].name)

    assert entries(store.model_dir(MODEL)) == ["current", "previous", "versions"]


# ------------------------------------------------------------------ readers and swaps


def unlink_then_symlink(link: Path, target: str) -> None:
    """The naive swap seen in the wild: a reader can find no link at all between the two calls."""
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def missing_files_seen(model_file: Path, swap: Callable[[int], None], swaps: int = SWAPS) -> int:
    """Open ``model_file`` in a loop on another thread while ``swap(n)`` runs ``swaps`` times."""
    missing, opened = [0], [0]
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with model_file.open("rb") as handle:
                    handle.read(16)
                opened[0] += 1
            except FileNotFoundError:
                missing[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(swaps):
            swap(n)
    finally:
        stop.set()
        reader.join()
    assert opened[0] > 0
    return missing[0]


@pytest.fixture
def two_versions(store, kit) -> tuple[str, str]:
    v1, v2 = publish(store, kit, kit.bundles.v1), publish(store, kit, kit.bundles.v2)
    store.switch(MODEL, v1.name, previous=None)
    return v1.name, v2.name


def test_a_reader_never_misses_the_model_while_versions_swap_thousands_of_times(store, two_versions):
    a, b = two_versions

    def swap(n: int) -> None:
        store.switch(MODEL, (b, a)[n % 2], previous=(a, b)[n % 2])

    assert missing_files_seen(store.model_dir(MODEL) / "current" / "model.onnx", swap) == 0


def test_the_same_reader_catches_the_naive_unlink_then_symlink_swap(store, two_versions):
    link = store.model_dir(MODEL) / "current"

    def swap(n: int) -> None:
        unlink_then_symlink(link, f"versions/{two_versions[(n + 1) % 2]}")

    # The window between unlink and symlink is a few microseconds; on a loaded machine one batch of swaps
    # may give the reader no turn inside it, so swap in batches until it has been caught (at most ten).
    missing = 0
    for _ in range(10):
        missing += missing_files_seen(link / "model.onnx", swap)
        if missing:
            break
    assert missing > 0


# ------------------------------------------------------------------ retention and open versions


def test_gc_keeps_current_previous_and_the_newest_up_to_the_retention(tmp_path, kit):
    store = SlotStore(tmp_path, keep=2)
    v1, v2, v3 = (publish(store, kit, b) for b in (kit.bundles.v1, kit.bundles.v2, kit.bundles.slow))
    store.switch(MODEL, v3.name, previous=v2.name)

    assert store.gc(MODEL) == [v1.name]
    assert {s.name for s in store.versions(MODEL)} == {v2.name, v3.name}


def test_gc_never_removes_current_or_previous_even_with_a_retention_of_one(tmp_path, kit):
    store = SlotStore(tmp_path, keep=1)
    v1, v2 = publish(store, kit, kit.bundles.v1), publish(store, kit, kit.bundles.v2)
    store.switch(MODEL, v2.name, previous=v1.name)

    assert store.gc(MODEL) == []


def test_gc_skips_a_version_a_reader_holds_open(tmp_path, kit):
    store = SlotStore(tmp_path, keep=1)
    v1, v2, v3 = (publish(store, kit, b) for b in (kit.bundles.v1, kit.bundles.v2, kit.bundles.slow))
    store.switch(MODEL, v1.name, previous=None)
    handle = store.open_current(MODEL)
    store.switch(MODEL, v3.name, previous=v2.name)

    assert store.gc(MODEL) == []
    assert handle.model_path.read_bytes()[:4]
    handle.close()
    assert store.gc(MODEL) == [v1.name]


def test_an_open_handle_reads_the_version_it_opened_after_a_swap(store, kit, two_versions):
    a, b = two_versions
    with store.open_current(MODEL) as handle:
        store.switch(MODEL, b, previous=a)
        assert handle.slot.name == a
        assert handle.manifest.version == "1.0.0"
        assert handle.model_path.is_file()


# ------------------------------------------------------------------ recovery


def test_recover_removes_what_interrupted_steps_left_and_keeps_a_resumable_download(store, kit):
    publish(store, kit, kit.bundles.v1)
    model_dir, versions = store.model_dir(MODEL), store.versions_dir(MODEL)
    stale = versions / ".stage-2.0.0-abcdef"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    stale.chmod(0o555)
    (versions / ".2.0.0-abc.x1y2.partial").mkdir()
    (model_dir / ".current.1234.tmp").symlink_to("versions/nowhere")
    (model_dir / ".journal.json.abcd.tmp").write_bytes(b"{")
    downloads = store.downloads_dir(MODEL)
    (downloads / f"{'a' * 64}.partial").write_bytes(b"resume me")
    (downloads / f"{'b' * 64}.partial").write_bytes(b"stale")

    removed = store.recover(MODEL, keep_downloads=["a" * 64])

    assert len(removed) == 5
    assert entries(model_dir) == ["downloads", "versions"]
    assert entries(versions) == [kit.bundles.v1.slot]
    assert entries(downloads) == [f"{'a' * 64}.partial"]
