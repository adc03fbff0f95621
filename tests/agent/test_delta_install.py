"""Installs by delta: rebuilt from the running version when the delta is sound, else the full bundle, same step.

Real bundles and real deltas (``modelfleet.bundle.delta``) over real HTTP on loopback.
"""

from __future__ import annotations

import hashlib

import pytest

from modelfleet.agent import Installer, SlotStore, UpdateState
from modelfleet.bundle.delta import encode
from modelfleet.protocol import Artifact

MODEL = "digits"


class Events:
    def __init__(self) -> None:
        self.events = {}

    def __call__(self, event) -> None:
        self.events[event.id] = event

    def of(self, kind):
        (event,) = [e for e in self.events.values() if e.kind == kind]
        return event


@pytest.fixture(scope="module")
def on_v1(kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("delta-on-v1")
    with Installer(root, kit.config()) as agent:
        assert agent.assign(kit.desired(kit.bundles.v1)).state == UpdateState.COMMITTED
    return root


@pytest.fixture
def root_v1(on_v1, tmp_path, kit):
    return kit.copy_store(on_v1, tmp_path / "agent")


@pytest.fixture(scope="module")
def v1_to_v2(kit):
    return encode(kit.bundles.v1.data, kit.bundles.v2.data).data


def offer(kit, name: str, delta: bytes, *, full_name: str):
    """v2's assignment with ``delta`` served at ``/name`` and the full bundle at ``/full_name``."""
    desired = kit.desired(kit.bundles.v2, full_name)
    url = kit.serve(name, delta)
    artifact = Artifact(url=url, sha256=hashlib.sha256(delta).hexdigest(), size=len(delta))
    return desired.model_copy(update={"delta": artifact})


def install(root, kit, desired, **config):
    events = Events()
    with Installer(root, kit.config(**config), sink=events) as agent:
        journal = agent.assign(desired)
    return journal, events


def test_a_sound_delta_installs_without_the_full_download(root_v1, kit, v1_to_v2):
    desired = offer(kit, "v1-v2.mfd", v1_to_v2, full_name="full-for-delta.mfb")
    journal, events = install(root_v1, kit, desired)
    assert journal.state == UpdateState.COMMITTED
    assert SlotStore(root_v1).link(MODEL, "current") == kit.bundles.v2.slot
    assert kit.server.seen("full-for-delta.mfb") == [], "the full bundle was never requested"
    detail = events.of("installed").detail
    assert (detail["delivery"], detail["delta_bytes"]) == ("delta", len(v1_to_v2))
    assert detail["bytes_saved"] == len(kit.bundles.v2.data) - len(v1_to_v2) > 0
    assert kit.leftovers(root_v1) == []


def corrupt(delta: bytes) -> bytes:
    body = bytearray(delta)
    body[-40:] = bytes(b ^ 0xFF for b in body[-40:])
    return bytes(body)


# name -> how the offered delta is broken (the server offers these bytes' own sha256, as a buggy server would)
BROKEN = {
    "corrupt": corrupt,
    "truncated": lambda delta: delta[: len(delta) // 2],
    "not-a-delta": lambda _delta: b"hello" * 40,
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_delta_falls_back_to_the_full_bundle(root_v1, kit, v1_to_v2, case):
    desired = offer(kit, f"broken-{case}.mfd", BROKEN[case](v1_to_v2), full_name=f"full-{case}.mfb")
    journal, events = install(root_v1, kit, desired)
    assert journal.state == UpdateState.COMMITTED
    assert SlotStore(root_v1).link(MODEL, "current") == kit.bundles.v2.slot
    assert len(kit.server.seen(f"full-{case}.mfb")) >= 1
    detail = events.of("installed").detail
    assert detail["delivery"] == "full"
    assert detail["bytes_saved"] == 0
    assert detail["delta_refused"]
    assert kit.leftovers(root_v1) == []


def test_a_delta_from_another_base_is_refused_before_it_is_applied(root_v1, kit):
    from_alien = encode(kit.bundles.alien.data, kit.bundles.v2.data).data
    desired = offer(kit, "alien-v2.mfd", from_alien, full_name="full-alien.mfb")
    journal, events = install(root_v1, kit, desired)
    assert journal.state == UpdateState.COMMITTED
    assert "does not re-pack to the delta's base" in events.of("installed").detail["delta_refused"]


def test_a_delta_for_another_bundle_is_refused(root_v1, kit, v1_to_v2):
    to_slow = encode(kit.bundles.v1.data, kit.bundles.slow.data).data
    desired = offer(kit, "v1-slow.mfd", to_slow, full_name="full-other.mfb")
    journal, events = install(root_v1, kit, desired)
    assert journal.state == UpdateState.COMMITTED
    assert SlotStore(root_v1).link(MODEL, "current") == kit.bundles.v2.slot
    assert "the delta rebuilds" in events.of("installed").detail["delta_refused"]


def test_a_delta_that_cannot_be_downloaded_falls_back(root_v1, kit, v1_to_v2):
    desired = offer(kit, "gone.mfd", v1_to_v2, full_name="full-gone.mfb")
    kit.server.routes.pop("gone.mfd")
    journal, events = install(root_v1, kit, desired)
    assert journal.state == UpdateState.COMMITTED
    assert events.of("installed").detail["delivery"] == "full"


def test_deltas_can_be_switched_off(root_v1, kit, v1_to_v2):
    desired = offer(kit, "unused.mfd", v1_to_v2, full_name="full-off.mfb")
    journal, events = install(root_v1, kit, desired, use_deltas=False)
    assert journal.state == UpdateState.COMMITTED
    assert kit.server.seen("unused.mfd") == []
    assert events.of("installed").detail["delivery"] == "full"


def test_a_rollback_to_a_kept_version_downloads_nothing(root_v1, kit):
    journal, _ = install(root_v1, kit, kit.desired(kit.bundles.v2))
    assert journal.state == UpdateState.COMMITTED
    back = kit.desired(kit.bundles.v1, "v1-rollback.mfb", rollback=True)
    journal, events = install(root_v1, kit, back)
    assert journal.state == UpdateState.COMMITTED
    assert events.of("installed").detail["delivery"] == "kept"
    assert kit.server.seen("v1-rollback.mfb") == []
