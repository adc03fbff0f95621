"""The registry over HTTP: verified uploads, immutable versions, yanks, aliases with history, lineage."""

import hashlib
import tarfile

import pytest

from modelfleet.bundle import PublicKey


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs(server_config):
    return sorted(p.name for p in (server_config.blob_dir / "sha256").rglob("*") if p.is_file())


def test_an_upload_is_verified_stored_and_described(fleet, bundles, server_config):
    data = bundles["1.0.0"].read_bytes()
    response = fleet.upload("1.0.0", role="release-manager")
    assert response.status_code == 201
    stored = response.json()
    keyid = PublicKey.from_file(bundles.key_file).keyid
    assert {k: stored[k] for k in ("model", "version", "release", "parent", "sha256", "size", "signed_by")} == {
        "model": "digits",
        "version": "1.0.0",
        "release": 1,
        "parent": None,
        "sha256": sha256(data),
        "size": len(data),
        "signed_by": [keyid],
    }
    assert stored["uploaded_by"].endswith(":test-release-manager")
    assert blobs(server_config) == [sha256(data)]
    detail = fleet.client.get("/v1/admin/bundles/digits/1.0.0", headers=fleet.admin("viewer")).json()
    assert detail["manifest"]["name"] == "digits"
    assert detail["manifest"]["evidence"]["provenance"]["dataset"] == "digits"


def test_the_same_bytes_again_are_a_no_op(fleet):
    first = fleet.upload("1.0.0")
    again = fleet.upload("1.0.0")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert len(fleet.client.get("/v1/admin/bundles", headers=fleet.admin()).json()) == 1


@pytest.mark.parametrize(("bundle", "code"), [("other_bytes", "version_exists"), ("release_taken", "release_exists")])
def test_versions_and_releases_are_immutable(fleet, bundles, bundle, code):
    fleet.upload("1.0.0")
    response = fleet.upload(getattr(bundles, bundle))
    assert (response.status_code, response.json()["error"]) == (409, code)


def tampered(path, tmp_path):
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as archive:
        data[archive.getmember("model.onnx").offset_data + 100] ^= 0xFF
    out = tmp_path / "tampered.mfb"
    out.write_bytes(bytes(data))
    return out


REFUSED = {
    "payload-altered": (lambda bundles, tmp: tampered(bundles["1.0.0"], tmp), "hash_mismatch"),
    "untrusted-signer": (lambda bundles, _: bundles.untrusted, "unknown_key"),
    "truncated": (lambda bundles, tmp: truncated(bundles["1.0.0"], tmp), "truncated"),
    "not-a-bundle": (lambda _, tmp: garbage(tmp), "bad_header"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_bundle_that_does_not_verify_is_refused_with_its_code_and_not_stored(
    fleet, bundles, tmp_path, server_config, case
):
    make, code = REFUSED[case]
    response = fleet.upload(make(bundles, tmp_path))
    assert response.status_code == 422
    assert response.json()["error"] == code
    assert fleet.client.get("/v1/admin/bundles", headers=fleet.admin()).json() == []
    assert not (server_config.blob_dir / "sha256").exists() or blobs(server_config) == []
    assert list((server_config.data_dir / "uploads").iterdir()) == []


def truncated(path, tmp_path):
    out = tmp_path / "truncated.mfb"
    out.write_bytes(path.read_bytes()[:5000])
    return out


def garbage(tmp_path):
    out = tmp_path / "garbage.mfb"
    out.write_bytes(b"\x01" * 2048)
    return out


def test_a_yank_withdraws_a_version_but_keeps_its_record(fleet, clock):
    fleet.upload("1.0.0")
    fleet.upload("1.1.0")
    yank = fleet.client.post("/v1/admin/bundles/digits/1.0.0/yank", json={"reason": "drift"}, headers=fleet.admin())
    assert (yank.status_code, yank.json()["yank_reason"]) == (200, "drift")
    yanked_at = yank.json()["yanked_at"]
    clock.advance(10)
    again = fleet.client.post("/v1/admin/bundles/digits/1.0.0/yank", json={"reason": "other"}, headers=fleet.admin())
    assert (again.json()["yanked_at"], again.json()["yank_reason"]) == (yanked_at, "drift")
    live = fleet.client.get("/v1/admin/bundles", params={"include_yanked": False}, headers=fleet.admin()).json()
    assert [b["version"] for b in live] == ["1.1.0"]
    pin = fleet.client.post(
        "/v1/admin/pins", json={"model": "digits", "version": "1.0.0", "selector": {}}, headers=fleet.admin()
    )
    alias = fleet.client.put("/v1/admin/models/digits/aliases/stable", json={"version": "1.0.0"}, headers=fleet.admin())
    assert [(r.status_code, r.json()["error"]) for r in (pin, alias)] == [(409, "yanked"), (409, "yanked")]


def test_an_alias_moves_and_keeps_its_history(fleet, clock):
    fleet.upload("1.0.0")
    fleet.upload("1.1.0")
    headers = fleet.admin("release-manager")
    first = fleet.client.put("/v1/admin/models/digits/aliases/stable", json={"version": "1.0.0"}, headers=headers)
    clock.advance(3600)
    moved = fleet.client.put("/v1/admin/models/digits/aliases/stable", json={"version": "1.1.0"}, headers=headers)
    assert (first.json()["previous_version"], moved.json()["previous_version"]) == (None, "1.0.0")
    aliases = fleet.client.get("/v1/admin/models/digits/aliases", headers=headers).json()
    assert [(a["name"], a["version"]) for a in aliases] == [("stable", "1.1.0")]
    history = fleet.client.get("/v1/admin/models/digits/aliases/stable/history", headers=headers).json()
    assert [(h["version"], h["previous_version"], h["changed_at"]) for h in history] == [
        ("1.0.0", None, "2026-11-23T12:00:00Z"),
        ("1.1.0", "1.0.0", "2026-11-23T13:00:00Z"),
    ]


def test_an_alias_to_an_unknown_version_is_404(fleet):
    fleet.upload("1.0.0")
    response = fleet.client.put(
        "/v1/admin/models/digits/aliases/stable", json={"version": "9.9.9"}, headers=fleet.admin()
    )
    assert (response.status_code, response.json()["error"]) == (404, "unknown_bundle")


def test_lineage_follows_parents_and_shows_provenance(fleet):
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        fleet.upload(version)
    lineage = fleet.client.get("/v1/admin/models/digits/lineage/1.2.0", headers=fleet.admin("viewer")).json()
    assert [(a["version"], a["parent"]) for a in lineage["ancestors"]] == [("1.1.0", "1.0.0"), ("1.0.0", None)]
    assert lineage["ancestors"][0]["provenance"]["dataset"] == "digits"
    assert lineage["children"] == []
    root = fleet.client.get("/v1/admin/models/digits/lineage/1.0.0", headers=fleet.admin("viewer")).json()
    assert [c["version"] for c in root["children"]] == ["1.1.0"]


def test_models_summarise_their_versions(fleet):
    for version in ("1.0.0", "1.1.0"):
        fleet.upload(version)
    models = fleet.client.get("/v1/admin/models", headers=fleet.admin("viewer")).json()
    assert [(m["name"], m["versions"], m["latest_version"], m["latest_release"]) for m in models] == [
        ("digits", 2, "1.1.0", 2)
    ]


def test_an_unknown_version_is_404(fleet):
    response = fleet.client.get("/v1/admin/bundles/digits/1.0.0", headers=fleet.admin())
    assert (response.status_code, response.json()["error"]) == (404, "unknown_bundle")
