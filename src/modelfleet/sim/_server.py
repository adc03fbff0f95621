"""The real fleet server on loopback for a simulation, on the simulation's clock, and a retrain inbox.

:class:`FleetServer` is ``init_server`` + ``create_app`` under uvicorn in a child
process, given a :class:`~modelfleet.sim._clock.SharedClock` on the same file as
the simulator's, so the server's "now" is the fleet's. Its background loops
tick on wall time, so they are set far apart and the simulator asks for the
same work on fleet time instead: one reconciler look per window
(``POST /v1/admin/rollouts/reconcile``) and one drift check per window
(:func:`~modelfleet.server.check_drift`, the periodic job's body).

:class:`RetrainInbox` is the webhook ``retrain.requested`` is delivered to: a
loopback HTTP endpoint that checks the HMAC signature and keeps the events.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from modelfleet.bundle import PublicKey, SigningKey
from modelfleet.errors import ModelfleetError
from modelfleet.rollout import DriftPolicy
from modelfleet.server import (
    SIGNATURE_HEADER,
    DriftCheck,
    DriftSettings,
    RetrainNotifier,
    ServerConfig,
    check_drift,
    create_app,
    init_server,
    load_server_config,
    verify_signature,
)
from modelfleet.sim._clock import SharedClock
from modelfleet.store import make_engine

__all__ = ["FleetServer", "RetrainInbox", "serve"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0
_FAR_S = 3600.0  # background loops on wall time: the simulator drives this work on fleet time instead
_MAX_EVENT_BYTES = 1 << 20
_ENTRY = "import sys; from modelfleet.sim._server import serve; serve(*sys.argv[1:])"


class RetrainInbox:
    """A loopback webhook receiver for ``retrain.requested``; events with a bad signature are refused (401)."""

    def __init__(self) -> None:
        self.secret = secrets.token_hex(16)
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self._lock = threading.Lock()
        inbox = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
                """Quiet: the simulator reports what arrived."""

            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), _MAX_EVENT_BYTES)
                body = self.rfile.read(length)
                ok = verify_signature(inbox.secret, body, self.headers.get(SIGNATURE_HEADER))
                with inbox._lock:
                    if ok:
                        inbox.events.append(json.loads(body))
                    else:
                        inbox.refused += 1
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/retrain"
        self._thread = threading.Thread(target=self._server.serve_forever, name="retrain-inbox", daemon=True)
        self._thread.start()

    def received(self) -> list[dict[str, Any]]:
        """The verified events so far."""
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


def serve(config_path: str, clock_path: str, port: str) -> None:
    """The server process's body: the app on the shared clock, under uvicorn on ``127.0.0.1:port``."""
    config = ServerConfig.model_validate_json(Path(config_path).read_bytes())
    app = create_app(config, clock=SharedClock(Path(clock_path)))
    uvicorn.run(
        app, host="127.0.0.1", port=int(port), log_level="warning", lifespan="on", backlog=4096, timeout_keep_alive=3600
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FleetServer:
    """A real modelfleet server (SQLite, uvicorn on loopback, its own process) on the simulation's clock.

    The server runs in a child process so that it and the devices use both cores;
    it reads the same :class:`SharedClock` the simulator advances.

    Args:
        data_dir: the server's data directory (initialised here).
        clock: the simulation's clock, shared with the devices and the server process.
        poll_seconds: the check-in interval devices are told.
        drift_policy: when devices count as drifting and retraining is requested.
        lookback_seconds: windows the drift monitor reads.
        inbox: where ``retrain.requested`` is delivered.
    """

    def __init__(
        self,
        data_dir: Path,
        clock: SharedClock,
        *,
        poll_seconds: int,
        drift_policy: DriftPolicy,
        lookback_seconds: int,
        inbox: RetrainInbox,
    ) -> None:
        self.clock = clock
        made = init_server(data_dir, clock=clock)
        self.signing_key = SigningKey.from_file(made.signing_key)
        self.trusted_pem = PublicKey.from_file(made.trusted_key).to_pem().decode()
        self.drift = DriftSettings(
            enabled=False,
            policy=drift_policy,
            lookback_seconds=lookback_seconds,
            webhook_url=inbox.url,
            webhook_secret=inbox.secret,
            webhook_max_attempts=2,
            webhook_backoff_seconds=0.0,
        )
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.config = load_server_config(data_dir).model_copy(
            update={
                "public_url": self.url,
                "poll_seconds": poll_seconds,
                "reconcile_seconds": _FAR_S,
                # Every rollout change goes through the server's own routes, which drop this cache.
                "rollout_cache_seconds": _FAR_S,
                "last_seen_flush_seconds": 60.0,
                "drift": self.drift,
            }
        )
        config_path = data_dir / "sim-server.json"
        config_path.write_text(self.config.model_dump_json())
        # A fresh interpreter (not multiprocessing): it must not re-run the caller's __main__.
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-c", _ENTRY, str(config_path), str(clock.path), str(port)]
        )
        self.admin = httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {made.admin_token}"}
        )
        self.admin_token = made.admin_token
        self._wait_ready()
        self.engine = make_engine(self.config.database_url)
        self._notifier = RetrainNotifier(self.drift, sleep=lambda _s: None)

    @property
    def pid(self) -> int:
        """The server process's id."""
        return self._process.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                if self.admin.get("/healthz").status_code == 200:  # noqa: PLR2004 - HTTP OK
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self._process.kill()
        self._process.wait()
        msg = f"the fleet server did not start on {self.url}"
        raise ModelfleetError(msg, code="server_not_started")

    # ------------------------------------------------------------ admin calls

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:  # noqa: ANN401 - JSON
        reply = self.admin.request(method, path, **kwargs)
        if reply.status_code >= 400:  # noqa: PLR2004 - HTTP error
            msg = f"{method} {path}: {reply.status_code} {reply.text[:500]}"
            raise ModelfleetError(msg, code="admin_call_failed")
        return reply.json() if reply.content else None

    def push(self, bundle: Path) -> None:
        """Upload a signed bundle."""
        headers = {"Content-Type": "application/octet-stream"}
        self._call("POST", "/v1/admin/bundles", content=bundle.read_bytes(), headers=headers)

    def pin(self, model: str, version: str) -> None:
        """Pin ``version`` on every device and make it the ``stable`` alias (the baseline of later rollouts)."""
        self._call("POST", "/v1/admin/pins", json={"model": model, "version": version, "selector": {}})
        self._call("PUT", f"/v1/admin/models/{model}/aliases/stable", json={"version": version})

    def enrollment_token(self, uses: int, tags: dict[str, str]) -> str:
        """A token ``uses`` devices enroll with; they get ``tags``."""
        return str(self._call("POST", "/v1/admin/enrollment-tokens", json={"max_uses": uses, "tags": tags})["token"])

    def viewer_token(self, name: str = "dashboard") -> str:
        """A new read-only (``viewer``) admin token, e.g. to sign in to the dashboard pages with."""
        return str(self._call("POST", "/v1/admin/tokens", json={"name": name, "role": "viewer"})["token"])

    @property
    def dashboard_url(self) -> str:
        """Where the dashboard's sign-in form is."""
        return f"{self.url}/dashboard/login"

    def start_rollout(self, spec: dict[str, Any]) -> str:
        """Create and start a rollout (forced past a plan the fleet is too small for); its id."""
        return str(self._call("POST", "/v1/admin/rollouts", params={"force": "true"}, json=spec)["id"])

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """A rollout with its decisions."""
        return dict(self._call("GET", f"/v1/admin/rollouts/{rollout_id}"))

    def start_experiment(self, spec: dict[str, Any]) -> str:
        """Start an experiment (forced past a plan the fleet is too small for); its id."""
        return str(self._call("POST", "/v1/admin/experiments", params={"force": "true"}, json=spec)["id"])

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """An experiment with its analysis now."""
        return dict(self._call("GET", f"/v1/admin/experiments/{experiment_id}"))

    def reconcile(self) -> list[str]:
        """One reconciler look now; the rollouts that moved."""
        return list(self._call("POST", "/v1/admin/rollouts/reconcile")["moved"])

    def deliveries(self, model: str) -> list[dict[str, Any]]:
        """Per version: installs, how many by delta, and the bytes they took (ADR 0010)."""
        return list(self._call("GET", "/v1/admin/deliveries", params={"model": model}))

    def windows(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """Telemetry sums per (version, cohort, window)."""
        params: dict[str, str | int] = {"model": model, "limit": 1000}
        if version is not None:
            params["version"] = version
        return list(self._call("GET", "/v1/admin/telemetry/windows", params=params))

    def drift_report(self, model: str, version: str) -> dict[str, Any]:
        """The drift monitor's current result for a version."""
        return dict(self._call("GET", f"/v1/admin/models/{model}/versions/{version}/drift"))

    def check_drift(self) -> list[DriftCheck]:
        """One run of the periodic drift job, now (fleet time); delivers ``retrain.requested`` to the inbox."""
        return check_drift(self.engine, self.clock, self.drift, self._notifier)

    def close(self) -> None:
        """Stop the server process (SIGTERM: uvicorn shuts down and flushes)."""
        self.admin.close()
        self.engine.dispose()
        if self._process.poll() is None:
            self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)

    def serve_until_interrupted(self) -> None:
        """Block until Ctrl-C (the demo leaves the server up for its pages)."""
        with contextlib.suppress(KeyboardInterrupt):
            self._process.wait()
