"""``init_server`` and ``server.json``: a data directory that runs, moves, and refuses a second init."""

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from modelfleet.bundle import BuildOptions, SigningKey, build_bundle
from modelfleet.errors import ConfigError, StoreError
from modelfleet.server import ServerConfig, create_app, init_server, load_server_config


@pytest.fixture
def initialised(tmp_path, empty_database_url, clock):
    return init_server(tmp_path / "data", database_url=empty_database_url, clock=clock)


def test_init_makes_a_directory_a_server_runs_from(initialised, tmp_path, bundles, clock):
    data = tmp_path / "data"
    assert initialised.signing_key == data / "keys" / "bundle-signing.key"
    assert initialised.config.trusted_keys == (data / "keys" / "bundle-signing.pub",)
    assert initialised.admin_token.startswith("mfa_")
    config = load_server_config(data)
    assert config == initialised.config
    bundle = tmp_path / "signed-by-init-key.mfb"
    options = BuildOptions(name="digits", version="3.0.0", release=30, labels=bundles.labels)
    build_bundle(bundles.model, bundles.validation, [SigningKey.from_file(initialised.signing_key)], bundle, options)
    admin = {"Authorization": f"Bearer {initialised.admin_token}"}
    with TestClient(create_app(config, clock=clock)) as client:
        assert client.get("/v1/admin/devices", headers=admin).json() == []
        upload = client.post("/v1/admin/bundles", content=bundle.read_bytes(), headers=admin)
        assert upload.status_code == 201, upload.text
        assert (
            client.post("/v1/admin/bundles", content=bundles["1.0.0"].read_bytes(), headers=admin).json()["error"]
            == "unknown_key"
        )


def test_a_second_init_is_refused(initialised, tmp_path, empty_database_url):
    with pytest.raises(ConfigError) as refused:
        init_server(tmp_path / "data", database_url=empty_database_url)
    assert refused.value.code == "already_initialized"


def test_the_default_database_lives_in_the_directory_and_the_directory_can_move(tmp_path, clock):
    result = init_server(tmp_path / "data", clock=clock)
    saved = json.loads((tmp_path / "data" / "server.json").read_text())
    assert saved["database_url"] is None
    assert saved["blob_dir"] == "blobs"
    assert saved["trusted_keys"] == ["keys/bundle-signing.pub"]
    assert (tmp_path / "data" / "modelfleet.db").is_file()
    shutil.move(tmp_path / "data", tmp_path / "moved")
    moved = load_server_config(tmp_path / "moved")
    assert moved.database_url.endswith("/moved/modelfleet.db")
    assert moved.blob_dir == tmp_path / "moved" / "blobs"
    admin = {"Authorization": f"Bearer {result.admin_token}"}
    with TestClient(create_app(moved, clock=clock)) as client:
        assert client.get("/v1/admin/models", headers=admin).status_code == 200


@pytest.mark.parametrize(
    ("content", "code", "words"),
    [
        (None, "not_initialized", "server init"),
        ("{not json", "bad_server_config", "server.json"),
        ("[]", "bad_server_config", "JSON object"),
        ('{"blob_dir": "b", "trusted_keys": ["k.pub"], "poll_seconds": 0}', "bad_server_config", "poll_seconds"),
        ('{"blob_dir": "b", "trusted_keys": ["k.pub"], "surprise": 1}', "bad_server_config", "surprise"),
    ],
)
def test_a_broken_config_is_refused_with_its_reason(tmp_path, content, code, words):
    if content is not None:
        (tmp_path / "server.json").write_text(content)
    with pytest.raises(ConfigError) as refused:
        load_server_config(tmp_path)
    assert refused.value.code == code
    assert words in refused.value.message


def test_an_unreadable_trusted_key_stops_the_app_from_starting(tmp_path):
    config = ServerConfig(
        data_dir=tmp_path, database_url="sqlite://", blob_dir=tmp_path / "b", trusted_keys=(tmp_path / "missing.pub",)
    )
    with pytest.raises(ConfigError) as refused:
        create_app(config)
    assert refused.value.code == "bad_key_file"


def test_the_app_refuses_to_start_on_a_database_without_the_schema(tmp_path, bundles, empty_database_url, clock):
    config = ServerConfig(
        data_dir=tmp_path, database_url=empty_database_url, blob_dir=tmp_path / "b", trusted_keys=(bundles.key_file,)
    )
    with pytest.raises(StoreError) as refused, TestClient(create_app(config, clock=clock)):
        pass
    assert refused.value.code == "schema_missing"
