"""Retraining triggers end to end: real devices send summaries, the job decides once, a real webhook gets it signed.

The webhook receiver is a real HTTP server on loopback in a thread; the command
is a real Python subprocess. Backoff is shortened to milliseconds, not mocked.
"""

import hashlib
import hmac
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from modelfleet.bundle import parse_manifest
from modelfleet.server import load_server_config, save_server_config
from modelfleet.server._retrain import (
    SIGNATURE_HEADER,
    DriftSettings,
    RetrainNotifier,
    check_drift,
    retrain_event,
    verify_signature,
)
from modelfleet.store import AuditEntry, find_bundle, session_factory

SECRET = "a-webhook-secret-of-some-length"
WINDOW = timedelta(minutes=5)
N = 400


@dataclass
class Receiver:
    """A webhook endpoint that answers ``statuses`` in turn, then 200, and keeps every request."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    delivered: int = 0

    def answer(self) -> int:
        return self.statuses.pop(0) if self.statuses else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((dict(self.headers.items()), body))
            status = state.answer()
            state.delivered += status == 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/retrain"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def settings(**changes) -> DriftSettings:
    fast = {"webhook_backoff_seconds": 0.01, "webhook_backoff_max_seconds": 0.05, "webhook_timeout_seconds": 5}
    return DriftSettings.model_validate(fast | changes)


def references(engine, version):
    with session_factory(engine)() as session:
        return parse_manifest(find_bundle(session, "digits", version).manifest.encode()).evidence.references


def stable_counts(histogram, n=N):
    total = sum(histogram.counts)
    return [count * n // total for count in histogram.counts]


def shifted_counts(histogram, n=N):
    return [n] + [0] * (len(histogram.counts) - 1)  # everything in the lowest bin


@dataclass
class Sender:
    """Sends summaries of a version for devices, window after window, as the agent would."""

    fleet: object
    engine: object
    sent: int = 0

    def windows(self, devices, version, shape, count=3, start=None):
        refs = references(self.engine, version)
        counts = stable_counts if shape == "stable" else shifted_counts
        features = [counts(h) for h in refs.features]
        confidence = counts(refs.confidence)
        start = start or self.fleet.clock.now() - count * WINDOW
        for device in devices:
            batch = []
            for k in range(count):
                self.sent += 1
                batch.append({
                    "id": f"summary-{self.sent:06d}", "model": "digits", "version": version,
                    "window_start": (start + k * WINDOW).isoformat(), "window_seconds": 300, "n": N,
                    "latency_counts": [], "latency_sum_ms": 1.0 * N, "confidence_counts": confidence,
                    "confidence_sum": 0.5 * sum(confidence), "confidence_sum_sq": 0.25 * sum(confidence),
                    "predicted_counts": [], "feature_counts": features,
                })  # fmt: skip
            response = self.fleet.client.post("/v1/telemetry", json={"summaries": batch}, headers=device.headers)
            assert response.status_code == 200, response.text


@pytest.fixture
def drifting_fleet(fleet, engine):
    """digits 1.0.0 and 1.1.0 registered; ten devices on 1.1.0, the five at site north drifting."""
    for version in ("1.0.0", "1.1.0"):
        assert fleet.upload(version).status_code == 201
    north = [fleet.device(f"dev-north-{i}", tags={"site": "north"}) for i in range(5)]
    south = [fleet.device(f"dev-south-{i}", tags={"site": "south"}) for i in range(5)]
    sender = Sender(fleet, engine)
    sender.windows(north, "1.1.0", "shifted")
    sender.windows(south, "1.1.0", "stable")
    return north, south, sender


def actions(engine, *wanted):
    with session_factory(engine)() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        return [(row.action, row.target, row.detail) for row in rows if row.action in wanted]


def test_the_webhook_is_retried_until_accepted_and_gets_one_signed_event(drifting_fleet, engine, clock, receiver):
    receiver.statuses = [503, 500]
    notifier = RetrainNotifier(settings(webhook_url=receiver.url, webhook_secret=SECRET))
    (check,) = check_drift(engine, clock, settings(webhook_url=receiver.url, webhook_secret=SECRET), notifier)
    assert check.requested is True
    assert [(d.target, d.delivered, d.attempts, d.status) for d in check.deliveries] == [("webhook", True, 3, 200)]
    assert len(receiver.requests) == 3
    assert receiver.delivered == 1
    headers, body = receiver.requests[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    assert len({h["X-Modelfleet-Delivery"] for h, _ in receiver.requests}) == 1  # one id across retries
    event = json.loads(body)
    assert (event["event"], event["model"], event["version"]) == ("retrain.requested", "digits", "1.1.0")
    assert event["at"] == clock.now().isoformat()
    evidence = event["evidence"]
    assert (evidence["devices"], evidence["drifting_devices"], evidence["share"]) == (10, 5, 0.5)
    assert {g["group"]: g["share"] for g in evidence["groups"]} == {"north": 1.0, "south": 0.0}
    assert evidence["top_features"]
    assert [a for a, _, _ in actions(engine, "retrain.requested", "retrain.delivered")] == [
        "retrain.requested",
        "retrain.delivered",
    ]


def test_a_forged_or_altered_body_fails_the_signature_check():
    body = json.dumps({"event": "retrain.requested"}).encode()
    header = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert verify_signature(SECRET, body, header) is True
    assert verify_signature(SECRET, body + b" ", header) is False
    assert verify_signature("another-secret-entirely", body, header) is False
    assert verify_signature(SECRET, body, None) is False


def test_retraining_is_requested_once_until_the_share_drops_then_again(drifting_fleet, engine, clock, receiver):
    north, _, sender = drifting_fleet
    configured = settings(webhook_url=receiver.url, webhook_secret=SECRET)
    notifier = RetrainNotifier(configured)
    first = check_drift(engine, clock, configured, notifier)
    clock.advance(60)
    second = check_drift(engine, clock, configured, notifier)
    assert [(c.requested, c.suppressed) for c in first + second] == [(True, False), (False, True)]
    assert receiver.delivered == 1
    assert len(actions(engine, "drift.evaluated")) == 2
    assert len(actions(engine, "retrain.requested")) == 1

    clock.advance(15 * 60)  # north recovers: three newer stable windows
    sender.windows(north, "1.1.0", "stable")
    (third,) = check_drift(engine, clock, configured, notifier)
    assert (third.requested, third.cleared, third.drift.result.share) == (False, True, 0.0)
    assert [a for a, _, _ in actions(engine, "drift.cleared")] == ["drift.cleared"]

    clock.advance(15 * 60)  # and drifts again: a new episode, a new request
    sender.windows(north, "1.1.0", "shifted")
    (fourth,) = check_drift(engine, clock, configured, notifier)
    assert fourth.requested is True
    assert receiver.delivered == 2
    assert len(actions(engine, "retrain.requested")) == 2


def test_a_delivery_that_fails_every_attempt_is_recorded_and_retried_next_run(drifting_fleet, engine, clock, receiver):
    receiver.statuses = [500] * 6
    configured = settings(webhook_url=receiver.url, webhook_secret=SECRET, webhook_max_attempts=3)
    notifier = RetrainNotifier(configured)
    (check,) = check_drift(engine, clock, configured, notifier)
    assert [(d.delivered, d.attempts, d.error) for d in check.deliveries] == [(False, 3, "HTTP 500")]
    ((_, target, detail),) = actions(engine, "retrain.delivery_failed")
    assert target == "digits/1.1.0"
    assert detail["deliveries"][0]["attempts"] == 3
    clock.advance(60)
    (retry,) = check_drift(engine, clock, configured, notifier)
    assert retry.requested is True
    assert len(receiver.requests) == 6
    receiver.statuses = []
    clock.advance(60)
    (third,) = check_drift(engine, clock, configured, notifier)
    assert (third.requested, third.delivered, receiver.delivered) == (True, True, 1)


def test_a_client_error_is_not_retried(receiver):
    receiver.statuses = [401]
    notifier = RetrainNotifier(settings(webhook_url=receiver.url, webhook_secret=SECRET))
    (result,) = notifier.notify({"event": "retrain.requested", "model": "m", "version": "1.0.0"})
    assert (result.delivered, result.attempts, result.status) == (False, 1, 401)
    assert len(receiver.requests) == 1


def test_an_unreachable_webhook_fails_after_its_attempts():
    configured = settings(
        webhook_url="http://127.0.0.1:9/nothing-listens", webhook_secret=SECRET, webhook_max_attempts=2
    )
    (result,) = RetrainNotifier(configured).notify({"event": "retrain.requested"})
    assert (result.delivered, result.attempts, result.status) == (False, 2, None)
    assert "ConnectError" in (result.error or "")


def test_the_command_gets_the_event_on_stdin(drifting_fleet, engine, clock, tmp_path):
    out = tmp_path / "event.json"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"
    configured = settings(command=[sys.executable, "-c", script, str(out)])
    (check,) = check_drift(engine, clock, configured, RetrainNotifier(configured))
    assert [(d.target, d.delivered, d.status) for d in check.deliveries] == [("command", True, 0)]
    event = json.loads(out.read_bytes())
    assert (event["event"], event["version"], event["evidence"]["drifting_devices"]) == (
        "retrain.requested",
        "1.1.0",
        5,
    )


@pytest.mark.parametrize(
    ("script", "timeout", "error"),
    [
        ("import sys; sys.stderr.write('trainer is down'); sys.exit(3)", 10, "exit status 3: trainer is down"),
        ("import time; time.sleep(30)", 0.5, "timed out after 0.5 s"),
    ],
)
def test_a_failing_or_hanging_command_is_reported(script, timeout, error):
    configured = settings(command=[sys.executable, "-c", script], command_timeout_seconds=timeout)
    event = retrain_event({"model": "m", "version": "1.0.0"}, datetime(2026, 11, 23, tzinfo=UTC))
    (result,) = RetrainNotifier(configured).notify(event)
    assert (result.target, result.delivered, result.error) == ("command", False, error)


def test_a_webhook_without_a_secret_is_refused():
    with pytest.raises(ValueError, match="webhook_secret"):
        DriftSettings(webhook_url="http://127.0.0.1:1/x")


def test_a_stable_fleet_requests_nothing(fleet, engine, clock, receiver):
    assert fleet.upload("1.0.0").status_code == 201
    devices = [fleet.device(f"dev-{i}", tags={"site": "a"}) for i in range(6)]
    Sender(fleet, engine).windows(devices, "1.0.0", "stable")
    configured = settings(webhook_url=receiver.url, webhook_secret=SECRET)
    (check,) = check_drift(engine, clock, configured, RetrainNotifier(configured))
    assert (check.requested, check.drift.result.evaluated, check.drift.result.drifting) == (False, 6, 0)
    assert receiver.requests == []
    ((_, _, detail),) = actions(engine, "drift.evaluated")
    assert (detail["share"], detail["retrain_requested"]) == (0.0, False)


def test_the_admin_route_shows_scores_shares_and_the_parent_comparison(drifting_fleet, fleet, engine):
    parent_devices = [fleet.device(f"dev-old-{i}", tags={"site": s}) for i, s in enumerate(["north", "south"] * 5)]
    drifting_fleet[2].windows(parent_devices, "1.0.0", "stable")
    response = fleet.client.get("/v1/admin/models/digits/versions/1.1.0/drift", headers=fleet.admin("viewer"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["parent"]) == ("digits", "1.1.0", "1.0.0")
    assert (body["decision"]["share"], body["decision"]["requested"]) == (0.5, True)
    assert [d["device_id"] for d in body["devices"][:5]] == [f"dev-north-{i}" for i in range(5)]
    assert all(d["drifting"] for d in body["devices"][:5])
    assert not any(d["drifting"] for d in body["devices"][5:])
    assert body["devices"][0]["latest"]["confidence"] > 0.2
    assert body["comparison"]["parent_share"] == 0.0
    assert body["comparison"]["rollback_recommended"] is True
    limited = fleet.client.get(
        "/v1/admin/models/digits/versions/1.1.0/drift?devices=2", headers=fleet.admin("viewer")
    ).json()
    assert limited["devices_shown"] == 2
    assert actions(engine, "drift.evaluated") == []  # reading writes nothing


def test_the_admin_route_needs_a_token_and_a_known_version(fleet):
    assert fleet.upload("1.0.0").status_code == 201
    path = "/v1/admin/models/digits/versions/{}/drift"
    assert fleet.client.get(path.format("1.0.0")).status_code == 401
    assert fleet.client.get(path.format("9.9.9"), headers=fleet.admin("viewer")).status_code == 404
    empty = fleet.client.get(path.format("1.0.0"), headers=fleet.admin("viewer")).json()
    assert (empty["decision"]["devices"], empty["devices"]) == (0, [])


def test_the_drift_settings_live_in_server_json(server_config):
    drift = {
        "policy": {"metric": "js", "windows": 4, "group_by": "line"},
        "webhook_url": "https://trainer.example/hooks",
        "webhook_secret": SECRET,
        "command": ["retrain", "--from-stdin"],
    }
    configured = server_config.model_copy(update={"drift": DriftSettings.model_validate(drift)})
    server_config.data_dir.mkdir(parents=True, exist_ok=True)
    save_server_config(configured)
    loaded = load_server_config(server_config.data_dir).drift
    assert (loaded.policy.metric, loaded.policy.windows, loaded.policy.group_by) == ("js", 4, "line")
    assert (loaded.webhook_url, loaded.webhook_secret, loaded.command) == (
        drift["webhook_url"],
        SECRET,
        tuple(drift["command"]),
    )
    assert SECRET not in repr(loaded)


def test_a_version_drifting_where_its_parent_does_not_rolls_back_its_rollout_when_configured(
    drifting_fleet, fleet, engine, clock
):
    parent_devices = [fleet.device(f"dev-old-{i}", tags={"site": s}) for i, s in enumerate(["north", "south"] * 5)]
    drifting_fleet[2].windows(parent_devices, "1.0.0", "stable")
    spec = {
        "model": "digits", "version": "1.1.0", "stages": [{"percent": 100}],
        "gates": [{"metric": "error_rate", "margin": 0.01}], "planning": {"device_sd": {"error_rate": 0.001}},
    }  # fmt: skip
    created = fleet.client.post("/v1/admin/rollouts?force=true", json=spec, headers=fleet.admin())
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]

    check_drift(engine, clock, settings(), RetrainNotifier(settings()))  # advice only by default
    assert fleet.client.get(f"/v1/admin/rollouts/{rollout_id}", headers=fleet.admin()).json()["state"] == "canary"

    check_drift(engine, clock, settings(rollback_on_drift=True), RetrainNotifier(settings()))
    rollout = fleet.client.get(f"/v1/admin/rollouts/{rollout_id}", headers=fleet.admin()).json()
    assert rollout["state"] == "rolling_back"
    (rollback,) = [d for d in rollout["decisions"] if d["event"] == "rollback"]
    assert rollback["actor"] == "drift-monitor"
    assert rollback["reason"].startswith("drift: ")
