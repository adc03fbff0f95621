"""Downloads against a real HTTP server on loopback that drops, stalls, trickles, lies and corrupts."""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from pathlib import Path

import pytest

from modelfleet.agent import Downloader, DownloadPolicy, HttpClient, HttpTransport, backoff_delay
from modelfleet.config import ProxyServer, ProxySettings
from modelfleet.errors import BadDataError, ConfigError, TransportError

DATA = bytes(range(251)) * 1045  # about 256 KiB; a prime period so a shifted range never matches
SHA = hashlib.sha256(DATA).hexdigest()


def seeded(seed: int) -> random.Random:
    """Jitter randomness with a fixed seed, as a device would inject it."""
    return random.Random(seed)  # noqa: S311 - backoff jitter, not cryptography


def policy(**overrides) -> DownloadPolicy:
    values = {
        "deadline_s": 10.0,
        "read_timeout_s": 0.5,
        "window_s": 0.5,
        "min_bytes_per_s": 64 * 1024,
        "max_retries": 2,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
    } | overrides
    return DownloadPolicy(**values)


@pytest.fixture
def downloads(tmp_path) -> Path:
    return tmp_path


def fetch(server, name, downloads, data=DATA, sha=SHA, **overrides) -> Path:
    free_space = overrides.pop("free_space", None)
    extra = {"free_space": free_space} if free_space else {}
    with Downloader(policy(**overrides), rng=seeded(1), **extra) as downloader:
        return downloader.fetch(server.url(name), downloads, sha256=sha, size=len(data))


def ranges(server, name) -> list[str | None]:
    return [r.range for r in server.seen(name)]


# ------------------------------------------------------------------ success and resume


def test_a_download_lands_under_its_sha256_with_no_partial_file(server, downloads):
    server.serve("plain", DATA)

    path = fetch(server, "plain", downloads)

    assert path == downloads / f"{SHA}.mfb"
    assert path.read_bytes() == DATA
    assert sorted(p.name for p in downloads.iterdir()) == [f"{SHA}.mfb"]


def test_a_dropped_connection_resumes_with_a_range_request(server, downloads):
    server.serve("drops", DATA, drop_after=100_000)

    assert fetch(server, "drops", downloads).read_bytes() == DATA
    assert ranges(server, "drops")[0] is None
    assert ranges(server, "drops")[1].startswith("bytes=")
    assert int(ranges(server, "drops")[1].removeprefix("bytes=").rstrip("-")) >= 90_000


def test_a_partial_file_from_an_earlier_run_is_resumed(server, downloads):
    server.serve("earlier", DATA)
    (downloads / f"{SHA}.partial").write_bytes(DATA[:123_456])

    assert fetch(server, "earlier", downloads).read_bytes() == DATA
    assert ranges(server, "earlier") == ["bytes=123456-"]


def test_a_server_that_ignores_range_is_read_from_the_start(server, downloads):
    server.serve("no-range", DATA, honor_range=False)
    (downloads / f"{SHA}.partial").write_bytes(DATA[:1000])

    assert fetch(server, "no-range", downloads).read_bytes() == DATA


def test_a_resumed_download_that_ends_corrupt_is_fetched_again_from_zero_once(server, downloads):
    server.serve("corrupt-range", DATA, drop_after=100_000, corrupt_ranges=1)

    assert fetch(server, "corrupt-range", downloads).read_bytes() == DATA
    assert ranges(server, "corrupt-range")[-1] is None  # the last request started over
    assert len(ranges(server, "corrupt-range")) == 3


def test_bytes_that_never_hash_right_are_refused_and_deleted(server, downloads):
    server.serve("wrong", DATA[:-1] + b"\x00")

    with pytest.raises(BadDataError) as caught:
        fetch(server, "wrong", downloads)
    assert caught.value.code == "hash_mismatch"
    assert list(downloads.iterdir()) == []


def test_an_already_downloaded_bundle_is_not_fetched_again(server, downloads):
    server.serve("again", DATA)
    fetch(server, "again", downloads)

    fetch(server, "again", downloads)

    assert len(server.seen("again")) == 1


# ------------------------------------------------------------------ bounds


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "close-delimited"])
def test_never_more_bytes_than_declared(server, downloads, declare_length):
    name = f"oversize-{declare_length}"
    server.serve(name, DATA, extra=b"\x00" * 10_000, declare_length=declare_length)

    with pytest.raises(BadDataError) as caught:
        fetch(server, name, downloads)
    assert caught.value.code == "oversized"
    assert list(downloads.iterdir()) == []


def test_a_stalled_server_hits_the_read_timeout_and_bounded_retries(server, downloads):
    server.serve("stall", DATA, stall_after=50_000)
    started = time.monotonic()

    with pytest.raises(TransportError) as caught:
        fetch(server, "stall", downloads, max_retries=1)

    assert caught.value.code == "stalled"
    assert len(server.seen("stall")) == 2
    assert time.monotonic() - started < 3


def test_a_trickle_below_the_minimum_throughput_is_aborted(server, downloads):
    server.serve("trickle", DATA, chunk=1024, delay=0.02)  # about 50 KiB/s, under the 64 KiB/s minimum
    started = time.monotonic()

    with pytest.raises(TransportError) as caught:
        fetch(server, "trickle", downloads, max_retries=0)

    assert caught.value.code == "too_slow"
    assert time.monotonic() - started < 2


def test_the_total_deadline_ends_retries(server, downloads):
    server.serve("slow-retries", DATA, stall_after=1000)

    with pytest.raises(TransportError) as caught:
        fetch(server, "slow-retries", downloads, deadline_s=0.8, read_timeout_s=0.3, max_retries=10, backoff_base_s=0.2)
    assert caught.value.code == "deadline"


def test_a_missing_artifact_is_not_retried(server, downloads):
    server.serve("gone", DATA, status=404)

    with pytest.raises(TransportError) as caught:
        fetch(server, "gone", downloads)
    assert caught.value.code == "http_404"
    assert len(server.seen("gone")) == 1


def test_server_errors_are_retried_with_backoff_until_the_bound(server, downloads):
    server.serve("busy", DATA, status=503)
    waits: list[float] = []
    with (
        Downloader(policy(max_retries=3), rng=seeded(3), sleep=waits.append) as downloader,
        pytest.raises(TransportError) as caught,
    ):
        downloader.fetch(server.url("busy"), downloads, sha256=SHA, size=len(DATA))

    assert caught.value.code == "http_5xx"
    assert len(server.seen("busy")) == 4
    same_seed = seeded(3)
    assert waits == [backoff_delay(n, same_seed, 0.01, 0.05) for n in range(3)]


# ------------------------------------------------------------------ through a proxy

# how the proxy refuses -> (URL scheme, proxy knobs, error code, attempts with max_retries=2)
PROXY_REFUSALS = {
    "407 to a tunnel": ("https", {"credentials": "dev:right"}, "proxy_auth", 1),
    "407 to an absolute-form request": ("http", {"credentials": "dev:right"}, "proxy_auth", 1),
    "502 to a tunnel": ("https", {"refuse": 502}, "proxy", 3),
    "503 to a tunnel": ("https", {"refuse": 503}, "proxy", 3),
    "504 to a tunnel": ("https", {"refuse": 504}, "proxy", 3),
}


@pytest.mark.parametrize("case", PROXY_REFUSALS)
def test_a_proxy_that_wants_other_credentials_is_asked_once_and_a_failing_upstream_is_retried(
    server, forwarding_proxy, downloads, case
):
    scheme, knobs, code, attempts = PROXY_REFUSALS[case]
    server.serve("proxied", DATA)
    forwarding_proxy.credentials = knobs.get("credentials")
    forwarding_proxy.refuse = knobs.get("refuse")
    proxy = ProxyServer.from_url(forwarding_proxy.url_with("dev", "hunter2"))
    transport = HttpTransport(proxies=ProxySettings(http=proxy, https=proxy))
    url = server.url("proxied") if scheme == "http" else "https://fleet.test/proxied"
    waits: list[float] = []
    with (
        HttpClient(transport=transport) as client,
        Downloader(policy(), client=client, rng=seeded(5), sleep=waits.append) as downloader,
        pytest.raises(TransportError) as caught,
    ):
        downloader.fetch(url, downloads, sha256=SHA, size=len(DATA))

    assert caught.value.code == code
    assert len(forwarding_proxy.seen) == attempts
    assert len(waits) == attempts - 1
    assert f"proxy {forwarding_proxy.url} refused" in caught.value.message
    assert "hunter2" not in str(caught.value)
    assert server.seen("proxied") == []


# ------------------------------------------------------------------ free space


def test_not_enough_free_space_refuses_before_any_request(server, downloads):
    server.serve("big", DATA)

    with pytest.raises(TransportError) as caught:
        fetch(server, "big", downloads, free_space=lambda _path: len(DATA))  # the margin needs twice the size

    assert caught.value.code == "no_space"
    assert server.seen("big") == []


def test_free_space_vanishing_mid_download_aborts_and_deletes_the_partial_file(server, downloads):
    server.serve("shrinking", DATA, chunk=8192, delay=0.001)
    calls = []

    def free(path: Path) -> int:
        calls.append(path)
        return 10**9 if len(calls) == 1 else 1000

    with pytest.raises(TransportError) as caught:
        fetch(server, "shrinking", downloads, free_space=free, space_check_bytes=32 * 1024)

    assert caught.value.code == "no_space"
    assert len(calls) == 2
    assert list(downloads.iterdir()) == []


# ------------------------------------------------------------------ the header probe


def test_fetch_head_reads_only_the_first_bytes(server):
    server.serve("head", DATA)
    with Downloader(policy()) as downloader:
        head = downloader.fetch_head(server.url("head"), 4096)

    assert head == DATA[:4096]
    assert ranges(server, "head") == ["bytes=0-4095"]


# ------------------------------------------------------------------ backoff


def test_backoff_ceilings_double_up_to_the_cap():
    rng = seeded(0)
    for attempt, ceiling in enumerate([1, 2, 4, 8, 16, 30, 30, 30]):
        delays = [backoff_delay(attempt, rng, 1.0, 30.0) for _ in range(500)]
        assert min(delays) >= 0
        assert max(delays) <= ceiling
        assert max(delays) > 0.9 * ceiling


def test_backoff_is_reproducible_from_a_seed():
    first = [backoff_delay(n, seeded(42), 1.0, 60.0) for n in range(10)]
    assert first == [backoff_delay(n, seeded(42), 1.0, 60.0) for n in range(10)]


def test_a_fleet_retrying_after_an_outage_spreads_over_the_whole_window():
    # Ten thousand devices at their 20th retry: full jitter with no clamp keeps them uniform on
    # [0, cap]; a clamped "min(cap, base * 2**n) + jitter" would put them all at the cap together.
    rng = seeded(2026)
    delays = [backoff_delay(20, rng, 1.0, 300.0) for _ in range(10_000)]

    assert statistics.mean(delays) == pytest.approx(150, rel=0.03)
    assert sum(d > 297 for d in delays) / len(delays) < 0.02
    deciles = statistics.quantiles(delays, n=10)
    assert deciles == pytest.approx([30 * k for k in range(1, 10)], abs=9)


def test_a_huge_attempt_number_does_not_overflow():
    assert 0 <= backoff_delay(10_000, seeded(0), 1.0, 5.0) <= 5


@pytest.mark.parametrize(
    "bad", [{"deadline_s": 0}, {"max_retries": -1}, {"space_margin": 0.5}, {"window_s": float("nan")}]
)
def test_a_policy_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        DownloadPolicy(**bad)
