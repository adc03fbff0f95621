"""Settings come from one place, with bounds checked when they are read."""

from pathlib import Path

import pytest

from modelfleet.config import BundleLimits, load_settings
from modelfleet.errors import ConfigError


def test_defaults_without_environment():
    settings = load_settings({})
    assert settings.bundle == BundleLimits()
    assert settings.server is None
    assert settings.token is None


def test_bundle_limits_and_api_defaults_read_from_modelfleet_variables():
    settings = load_settings(
        {
            "MODELFLEET_BUNDLE_MAX_MEMBER_BYTES": "1024",
            "MODELFLEET_SERVER": "http://127.0.0.1:8080",
            "MODELFLEET_TOKEN": "t0k",
            "UNRELATED": "ignored",
        }
    )
    assert settings.bundle.max_member_bytes == 1024
    assert settings.server == "http://127.0.0.1:8080"
    assert settings.token == "t0k"


def test_server_worker_settings_read_from_modelfleet_data_and_database_url():
    settings = load_settings({"MODELFLEET_DATA": "/srv/fleet", "MODELFLEET_DATABASE_URL": "postgresql://db/fleet"})
    assert settings.data_dir == Path("/srv/fleet")
    assert settings.database_url == "postgresql://db/fleet"
    assert load_settings({"MODELFLEET_DATA": ""}).data_dir is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODELFLEET_BUNDLE_CHUNK_BYTES", "lots"),
        ("MODELFLEET_BUNDLE_CHUNK_BYTES", "0"),
        ("MODELFLEET_BUNDLE_MAX_MEMBERS", "-3"),
    ],
)
def test_unusable_values_are_refused_with_the_variable_named(variable, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.code == "bad_setting"
    assert variable.removeprefix("MODELFLEET_BUNDLE_").lower() in str(caught.value) or variable in str(caught.value)
