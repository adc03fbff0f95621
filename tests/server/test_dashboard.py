"""The dashboard pages over real HTTP (uvicorn on loopback) on SQLite: numbers, sign-in, refusals, escaping."""

import re
import shutil
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from modelfleet.server import create_app
from modelfleet.store import Transition, append_audit, apply_transition, session_factory

HOSTILE = '<script>alert("x")</script>'
EVALUATION = {
    "decision": "rollback",
    "treated_devices": 7,
    "holdout_devices": 3,
    "gates": [
        {
            "metric": "mean_confidence",
            "direction": "higher_is_better",
            "margin": 0.02,
            "decision": "rollback",
            "estimate": -0.1234,
            "lower": -0.2,
            "upper": -0.0456,
            "treated_devices": 7,
            "holdout_devices": 3,
            "treated_mean": 0.61,
            "holdout_mean": 0.7334,
        }
    ],
}


@pytest.fixture
def database_url(sqlite_template, tmp_path):
    """SQLite only: the pages read what the admin API reads, which runs on both back ends elsewhere."""
    for part in sqlite_template.iterdir():
        shutil.copyfile(part, tmp_path / part.name)
    return f"sqlite:///{tmp_path / 'modelfleet.db'}"


@pytest.fixture
def live(server_config, clock, engine):
    """The app served by uvicorn on 127.0.0.1:<free port>; a client that keeps cookies but follows no redirects."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(server_config.model_copy(update={"public_url": url}), clock=clock, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    with httpx.Client(base_url=url, timeout=10) as http:
        yield http
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def seeded(fleet):
    """Four devices (one hostile tag, one hostile reported version), a rolled-back rollout, drift checks, events."""
    for version in ("1.0.0", "1.1.0"):
        assert fleet.upload(version).status_code == 201
    devices = [
        fleet.device(f"dev-{i}", tags={"ring": "field", "site": HOSTILE if i == 0 else "north"}) for i in range(4)
    ]
    for device in devices[:3]:
        assert fleet.checkin(device, installed_models=[fleet.installed("1.0.0", 1)]).status_code == 200
    hostile_version = {"model": "digits", "version": "<img src=x onerror=alert(1)>", "state": "idle"}
    assert fleet.checkin(devices[3], installed_models=[hostile_version]).status_code == 200
    assert fleet.client.post(f"/v1/admin/devices/{devices[2].id}/revoke", headers=fleet.admin()).status_code == 200
    spec = {
        "model": "digits",
        "version": "1.1.0",
        "holdout_percent": 30,
        "selector": {"ring": "field"},
        "stages": [{"percent": 50}, {"percent": 100}],
        "gates": [{"metric": "mean_confidence", "margin": 0.02}],
    }
    started = fleet.client.post("/v1/admin/rollouts", json=spec, headers=fleet.admin(), params={"force": "true"})
    assert started.status_code == 201, started.text
    rollout = started.json()
    with session_factory(fleet.engine).begin() as session:
        rolled_back = Transition(
            rollout_id=rollout["id"],
            seen_revision=rollout["revision"],
            event="rollback",
            from_state=rollout["state"],
            to_state="rolled_back",
            stage=0,
            resume_state=None,
            actor="reconciler",
            reason="gate mean_confidence: degradation",
            detail={"evaluation": EVALUATION},
        )
        assert apply_transition(session, rolled_back, now=fleet.clock.now())
        for share, drifting in ((0.25, 1), (0.5, 2)):
            detail = {
                "share": share,
                "drifting_devices": drifting,
                "devices": 4,
                "groups": [{"group": "north", "devices": 4, "drifting": drifting, "share": share}],
                "retrain_requested": share >= 0.5,
            }
            append_audit(
                session, at=fleet.clock.now(), actor="drift-monitor", action="drift.evaluated", target="digits/1.0.0",
                detail=detail,
            )  # fmt: skip
    return rollout


def text(page):
    """The page's visible text, tags removed, whitespace squeezed."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def sign_in(live, token):
    return live.post(
        "/dashboard/login", content=f"token={token}", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


def test_a_viewer_signs_in_once_and_sees_the_fleet_with_its_numbers(live, fleet, seeded):
    signed = sign_in(live, fleet.admin("viewer")["Authorization"].split()[1])
    assert signed.status_code == 303
    assert signed.headers["location"] == "/dashboard"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/dashboard" in cookie
    page = live.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    shown = text(page.text)
    assert "accepted 3" in shown
    assert "revoked 1" in shown
    assert "digits 1.0.0 committed 2" in shown, "dev-2 is revoked: only the two accepted devices on 1.0.0 count"
    assert "ring field 3" in shown
    assert "site north 2" in shown


def test_the_rollouts_page_shows_state_stage_and_the_gate_numbers_behind_the_decision(live, fleet, seeded):
    page = live.get("/dashboard/rollouts", headers=fleet.admin("viewer"))
    assert page.status_code == 200
    shown = text(page.text)
    assert seeded["id"] in shown
    assert "rolled_back" in shown
    assert "1 of 2" in shown, "stage 1 of 2"
    assert "gate mean_confidence: degradation" in shown
    assert "mean_confidence rollback -0.1234 [-0.2, -0.0456] 0.02 0.61 0.7334 7 / 3" in shown
    assert "start" in shown


def test_drift_experiments_and_activity_pages_render_what_is_stored(live, fleet, seeded):
    headers = fleet.admin("viewer")
    drift = text(live.get("/dashboard/drift", headers=headers).text)
    assert "digits/1.0.0" in drift
    assert "2 of 4" in drift
    assert "50.0%" in drift
    assert "north 50%" in drift
    experiments = live.get("/dashboard/experiments", headers=headers)
    assert experiments.status_code == 200
    assert "no experiments yet" in experiments.text
    activity = text(live.get("/dashboard/activity", headers=headers).text)
    assert f"rollout.rollback {seeded['id']}" in activity
    assert "device.revoke dev-2" in activity


def test_without_a_valid_admin_token_the_pages_answer_401_with_the_sign_in_form(live, fleet, seeded):
    for path in ("/dashboard", "/dashboard/rollouts", "/dashboard/drift", "/dashboard/activity"):
        page = live.get(path)
        assert page.status_code == 401, path
        assert 'action="/dashboard/login"' in page.text
        assert "digits" not in page.text
    device = fleet.device("dev-creds", tags={"ring": "field"})
    assert live.get("/dashboard", headers=device.headers).status_code == 401, "a device credential is no admin token"
    assert sign_in(live, device.credential).status_code == 401
    assert "set-cookie" not in sign_in(live, device.credential).headers
    live.cookies.set("modelfleet_dashboard", device.credential)
    refused = live.get("/dashboard")
    assert refused.status_code == 401
    assert "modelfleet_dashboard=" in refused.headers["set-cookie"], "the bad cookie is cleared"
    assert sign_in(live, "mfa_not-a-token").status_code == 401


def test_the_api_never_takes_the_dashboard_cookie(live, fleet, seeded):
    signed = sign_in(live, fleet.admin("admin")["Authorization"].split()[1])
    assert signed.status_code == 303
    assert live.get("/dashboard").status_code == 200
    assert live.get("/v1/admin/devices").status_code == 401, "the cookie's path is /dashboard and the API reads headers"
    assert live.post("/dashboard/logout").status_code == 200
    assert live.get("/dashboard").status_code == 401


def test_every_stored_value_is_escaped(live, fleet, seeded):
    page = live.get("/dashboard", headers=fleet.admin("viewer")).text
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page
