"""One mapping of foreign failures to the codes every agent event and log uses."""

import errno

import pytest

from modelfleet.agent._failures import disk_failure, http_failure
from modelfleet.agent._http import ExchangeError

HTTP_FAILURES = {
    "no connection in time": (ExchangeError("slow", code="connect_timeout"), "timeout", "connect_timeout"),
    "silent peer, client": (ExchangeError("quiet", code="read_timeout"), "timeout", "timeout"),
    "silent peer, download": (ExchangeError("quiet", code="read_timeout"), "stalled", "stalled"),
    "answer over its bound": (ExchangeError("long", code="too_large"), "timeout", "bad_response"),
    "refused": (ExchangeError("refused", code="connection"), "timeout", "connection"),
    "cut short": (ExchangeError("peer closed", code="connection"), "stalled", "connection"),
    "proxy refused": (ExchangeError("407", code="proxy"), "stalled", "proxy"),
}


@pytest.mark.parametrize("case", sorted(HTTP_FAILURES))
def test_http_failures_become_transport_errors_with_stable_codes(case):
    error, timeout_code, code = HTTP_FAILURES[case]
    wrapped = http_failure("http://server/x", error, timeout_code=timeout_code)
    assert wrapped.code == code
    assert wrapped.message.startswith("http://server/x: ")


@pytest.mark.parametrize(("number", "code"), [(errno.ENOSPC, "no_space"), (errno.EIO, "os_error")])
def test_disk_failures_say_whether_the_disk_is_full(number, code):
    message, got = disk_failure(OSError(number, "boom", "/data/x"))
    assert (got, message) == (code, "boom (/data/x)")
