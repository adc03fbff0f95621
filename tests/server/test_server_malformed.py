"""Malformed input gets a 4xx JSON answer naming the field, never a 5xx; schemathesis fuzzes the rest."""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

PROFILE = {"arch": "aarch64", "ram_bytes": 1024, "disk_free_bytes": 2048}
EVENT = {"id": "event-0001", "kind": "installed", "at": "2026-01-01T00:00:00Z"}
SUMMARY = {
    "id": "summary-0001", "model": "m", "version": "1.0.0", "window_start": "2026-01-01T00:00:00Z",
    "window_seconds": 60, "n": 1, "latency_counts": [], "latency_sum_ms": 0, "confidence_counts": [],
    "confidence_sum": 0, "confidence_sum_sq": 0, "predicted_counts": [], "feature_counts": [],
}  # fmt: skip
ENROLL = {"device_id": "dev-1", "public_key": "A" * 43 + "=", "issued_at": "yesterday", "inventory": PROFILE}


def checkin(**changes):
    return json.dumps({"inventory": PROFILE, "installed": [], **changes})


def event(**changes):
    return json.dumps({"events": [{**EVENT, **changes}]})


CHECKIN, TELEMETRY, EVENTS = "/v1/devices/checkin", "/v1/telemetry", "/v1/events"
WRONG_TYPE = checkin(inventory={**PROFILE, "ram_bytes": "lots"})
NEGATIVE = checkin(inventory={**PROFILE, "disk_free_bytes": -1})
BAD_STATE = checkin(installed=[{"model": "m", "state": "exploded"}])
PIN_WRONG_TYPE = json.dumps({"model": 5, "version": "1.0.0", "device_id": "dev-1"})
PIN_TWO_TARGETS = json.dumps({"model": "m", "version": "1", "device_id": "dev-1", "selector": {}})
HUGE_COUNT = json.dumps({"summaries": [{**SUMMARY, "n": 2**64}]})
NAIVE_SINCE = "/v1/admin/telemetry/windows?model=m&since=2026-01-01T00:00:00"

# (name, method, path, caller, raw body, status, error code, field)
MALFORMED = [
    ("wrong type", "POST", CHECKIN, "device", WRONG_TYPE, 422, "invalid", "inventory.ram_bytes"),
    ("negative number", "POST", CHECKIN, "device", NEGATIVE, 422, "invalid", "inventory.disk_free_bytes"),
    ("unknown field", "POST", CHECKIN, "device", checkin(surprise=1), 422, "invalid", "surprise"),
    ("missing field", "POST", CHECKIN, "device", json.dumps({"installed": []}), 422, "invalid", "inventory"),
    ("bad JSON", "POST", CHECKIN, "device", "{not json", 422, "bad_json", None),
    ("empty body", "POST", CHECKIN, "device", "", 422, "bad_json", None),
    ("array for object", "POST", CHECKIN, "device", "[]", 422, "invalid", None),
    ("nested too deep", "POST", CHECKIN, "device", "[" * 5000 + "]" * 5000, 422, "bad_json", None),
    ("bad enum", "POST", CHECKIN, "device", BAD_STATE, 422, "invalid", "installed.0.state"),
    ("too many items", "POST", TELEMETRY, "device", json.dumps({"summaries": [{}] * 501}), 422, "invalid", "summaries"),
    ("integer beyond 64 bits", "POST", TELEMETRY, "device", HUGE_COUNT, 422, "invalid", "summaries.0.n"),
    ("NaN", "POST", EVENTS, "device", event(detail={"x": float("nan")}), 422, "invalid", "events.0.detail.x"),
    ("NUL in a string", "POST", EVENTS, "device", event(reason="a\x00b"), 422, "invalid", None),
    (
        "time out of range",
        "POST",
        EVENTS,
        "device",
        event(at="0001-01-01T00:00:00+05:00"),
        422,
        "invalid",
        "events.0.at",
    ),
    (
        "bad timestamp",
        "POST",
        "/v1/devices/enroll",
        None,
        json.dumps({**ENROLL, "proof": "x"}),
        422,
        "invalid",
        "issued_at",
    ),
    ("admin wrong type", "POST", "/v1/admin/pins", "admin", PIN_WRONG_TYPE, 422, "invalid", "model"),
    ("admin both targets", "POST", "/v1/admin/pins", "admin", PIN_TWO_TARGETS, 422, "invalid", None),
    (
        "lone surrogate",
        "PUT",
        "/v1/admin/devices/dev-1/tags",
        "admin",
        json.dumps({"tags": {"a": "\ud800"}}),
        422,
        "bad_json",
        None,
    ),
    ("query type", "GET", "/v1/admin/devices?limit=many", "admin", None, 422, "invalid", "query.limit"),
    ("query bound", "GET", "/v1/admin/devices?limit=100000", "admin", None, 422, "invalid", "query.limit"),
    ("query naive time", "GET", NAIVE_SINCE, "admin", None, 422, "invalid", "query.since"),
    ("NUL in the path", "GET", "/v1/admin/bundles/digits/1.0%00", "admin", None, 422, "invalid", None),
    ("NUL in the query", "GET", "/v1/admin/events?kind=a%00b", "admin", None, 422, "invalid", None),
    ("path pattern", "GET", "/v1/admin/bundles/NOT_A_NAME/1.0.0", "admin", None, 422, "invalid", "path.model"),
    ("path type", "DELETE", "/v1/admin/pins/one", "admin", None, 422, "invalid", "path.pin_id"),
    (
        "path integer beyond the column",
        "DELETE",
        "/v1/admin/pins/8589934593",
        "admin",
        None,
        422,
        "invalid",
        "path.pin_id",
    ),
    ("bad sha", "GET", "/v1/artifacts/xyz", "device", None, 422, "invalid", "path.sha256"),
    ("unknown route", "GET", "/v1/nothing-here", None, None, 404, "not_found", None),
    ("wrong method", "DELETE", CHECKIN, "device", None, 405, "method_not_allowed", None),
    (
        "body too large",
        "POST",
        TELEMETRY,
        "device",
        json.dumps({"summaries": [], "pad": "x" * 300_000}),
        413,
        "too_large",
        None,
    ),
]


@pytest.fixture
def callers(fleet):
    return {None: {}, "admin": fleet.admin(), "device": fleet.device("dev-1").headers}


@pytest.mark.parametrize("case", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_a_json_refusal_naming_the_field(fleet, callers, case):
    _, method, path, caller, body, status, code, field = case
    headers = {**callers[caller], "Content-Type": "application/json"}
    response = fleet.client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "message", "field"}
    assert isinstance(answer["message"], str)
    assert answer["message"]
    if code is not None:
        assert answer["error"] == code
    assert answer["field"] == field


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(fleet, callers):
    def chunks():
        yield b'{"summaries": [], "pad": "'
        for _ in range(100):
            yield b"x" * 4096

    response = fleet.client.post(
        "/v1/telemetry", content=chunks(), headers={**callers["device"], "Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (413, "too_large")


def test_an_upload_over_its_own_limit_is_refused(fleet, callers, server_config):
    declared = fleet.client.post("/v1/admin/bundles", content=b"\0" * (1024 * 1024 + 1), headers=callers["admin"])
    assert (declared.status_code, declared.json()["error"]) == (413, "too_large")

    def chunks():
        for _ in range(17):
            yield b"\0" * 65536

    streamed = fleet.client.post("/v1/admin/bundles", content=chunks(), headers=callers["admin"])
    assert (streamed.status_code, streamed.json()["error"]) == (413, "too_large")
    assert list((server_config.data_dir / "uploads").iterdir()) == []


def test_schemathesis_finds_no_server_error(app, callers):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        headers = callers["admin"] if operation.path.startswith("/v1/admin") else callers["device"]
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            failures += fuzz(operation, mode, headers)
    assert failures == []


def fuzz(operation, mode, headers):
    failures = []

    @settings(
        max_examples=15, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(headers=dict(headers))
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except AssertionError as exc:
            failures.append((operation.label, mode.value, str(exc)[:500]))

    try:
        run()
    except Unsatisfiable:  # an operation without parameters has no negative cases
        assert mode is schemathesis.GenerationMode.NEGATIVE
    return failures
