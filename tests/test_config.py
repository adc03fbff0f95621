"""Settings come from one place, with bounds checked when they are read."""

from pathlib import Path

import pytest

from modelfleet.config import BundleLimits, ProxyServer, ProxySettings, load_proxy_settings, load_settings
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


PROXY = ProxyServer("proxy.lan", 3128)
OTHER = ProxyServer("other.lan", 8080)

# The proxy variables as load_proxy_settings reads them: (environment, --proxy, expected settings).
PROXY_ENVIRONMENTS = {
    "none": ({}, None, ProxySettings()),
    "https only": ({"HTTPS_PROXY": "http://proxy.lan:3128"}, None, ProxySettings(https=PROXY)),
    "http only": ({"HTTP_PROXY": "http://proxy.lan:3128"}, None, ProxySettings(http=PROXY)),
    "lower case alone": ({"https_proxy": "http://proxy.lan:3128"}, None, ProxySettings(https=PROXY)),
    "lower case wins": (
        {"https_proxy": "http://proxy.lan:3128", "HTTPS_PROXY": "http://other.lan:8080"},
        None,
        ProxySettings(https=PROXY),
    ),
    "lower-case http_proxy wins": (
        {"http_proxy": "http://proxy.lan:3128", "HTTP_PROXY": "http://other.lan:8080"},
        None,
        ProxySettings(http=PROXY),
    ),
    "empty lower case is unset": (
        {"https_proxy": "", "HTTPS_PROXY": "http://proxy.lan:3128"},
        None,
        ProxySettings(https=PROXY),
    ),
    "no scheme means http": ({"https_proxy": "proxy.lan:3128"}, None, ProxySettings(https=PROXY)),
    "no port means 80": ({"https_proxy": "http://proxy.lan/"}, None, ProxySettings(https=ProxyServer("proxy.lan"))),
    "credentials decoded": (
        {"https_proxy": "http://dev%40lab:p%3Ass@proxy.lan:3128"},
        None,
        ProxySettings(https=ProxyServer("proxy.lan", 3128, "dev@lab", "p:ss")),
    ),
    "no_proxy list": (
        {"NO_PROXY": " .Example.com, 10.0.0.0/8,,fleet.lan:8443  ::1 "},
        None,
        ProxySettings(no_proxy=(".example.com", "10.0.0.0/8", "fleet.lan:8443", "::1")),
    ),
    "lower-case no_proxy wins": ({"no_proxy": "a.lan", "NO_PROXY": "b.lan"}, None, ProxySettings(no_proxy=("a.lan",))),
    "--proxy replaces both": (
        {"https_proxy": "http://other.lan:8080", "HTTP_PROXY": "socks5://ignored:1080", "no_proxy": "*"},
        "http://proxy.lan:3128",
        ProxySettings(http=PROXY, https=PROXY, no_proxy=("*",)),
    ),
    "unrelated variables": ({"FTP_PROXY": "http://other.lan:8080", "ALL_PROXY": "x"}, None, ProxySettings()),
}


@pytest.mark.parametrize("case", sorted(PROXY_ENVIRONMENTS))
def test_proxy_settings_read_from_the_conventional_variables(case):
    env, explicit, expected = PROXY_ENVIRONMENTS[case]
    assert load_proxy_settings(env, proxy=explicit) == expected


def test_proxy_variables_stay_out_of_the_other_settings():
    # A SOCKS proxy set for other tools must not stop the server or the admin CLI.
    assert load_settings({"HTTPS_PROXY": "socks5://127.0.0.1:1080"}).bundle == BundleLimits()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTPS_PROXY", "socks5://dev:hunter2@proxy.lan:1080"),
        ("https_proxy", "https://dev:hunter2@proxy.lan:3128"),
        ("HTTP_PROXY", "http://dev:hunter2@proxy.lan:port"),
        ("http_proxy", "http://dev:hunter2@proxy.lan:3128/some/path"),
        ("HTTPS_PROXY", "http://dev:hunter2@:3128"),
        ("HTTPS_PROXY", "http://dev:hun/ter2@proxy.lan:3128"),
    ],
)
def test_an_unusable_proxy_url_is_refused_naming_the_variable_but_not_the_password(variable, value):
    with pytest.raises(ConfigError) as caught:
        load_proxy_settings({variable: value})
    assert caught.value.code == "bad_setting"
    assert caught.value.message.startswith(f"{variable}=")
    assert "hunter2" not in str(caught.value)
    assert "ter2" not in str(caught.value)


def test_a_proxy_password_stays_out_of_repr_and_url():
    settings = load_proxy_settings({"https_proxy": "http://dev:hunter2@proxy.lan:3128"})
    assert settings.https is not None
    assert settings.https.password == "hunter2"
    assert settings.https.url == "http://proxy.lan:3128"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(("host", "port"), [("", 3128), ("proxy.lan", 0), ("proxy.lan", 65536)])
def test_a_proxy_server_needs_a_host_and_a_tcp_port(host, port):
    with pytest.raises(ConfigError) as caught:
        ProxyServer(host, port)
    assert caught.value.code == "bad_setting"
