"""The admin CLI against a real server: `modelfleet server init/run` in subprocesses, real HTTP on loopback.

Every admin action goes through `python -m modelfleet ...` as a user types it;
outcomes are read from the CLI's own output, `--json` and exit codes
(0 done, 1 refused, 2 usage). Devices are played by plain HTTP calls with the
wire schemas, as an agent makes them.
"""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelfleet.bundle import DeviceProfile
from modelfleet.protocol import CheckinRequest, EnrollRequest, enrollment_message
from modelfleet.sim.models import digits_mlp

PROFILE = DeviceProfile(arch="x86_64", ram_bytes=2**31, disk_free_bytes=2**33)
TOKEN_LINE = re.compile(r"first admin token: (\S+)")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env.update(extra)
    return env


def cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env if env is not None else clean_env(),
    )


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One `modelfleet server run` process and how to reach it with the CLI."""

    def __init__(self, data, init_output, port, proc):
        self.data = data
        self.init_output = init_output
        self.token = TOKEN_LINE.search(init_output.stdout).group(1)
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc

    def admin(self, *args, token=None, env=None):
        return cli(*args, "--server", self.url, "--token", token or self.token, env=env)

    def signing_key(self):
        return Path(re.search(r"bundle signing key \(private.*?\): (\S+)", self.init_output.stdout).group(1))


def start_server(data, *, db=None, workers=1):
    init = cli("server", "init", "--data", str(data), *(["--db", db] if db else []))
    assert init.returncode == 0, init.stderr
    port = free_port()
    args = ["server", "run", "--data", str(data), "--port", str(port), "--workers", str(workers)]
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", *args], stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data / "server.log").read_text()
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1, trust_env=False)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        pytest.fail(f"server did not start: {(data / 'server.log').read_text()}")
    return Server(data, init, port, proc)


def stop_server(server):
    os.killpg(server.proc.pid, signal.SIGINT)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


class Device:
    """A device as the agent will be: its own key pair, enroll with proof, check in with a credential."""

    def __init__(self, server, device_id):
        self.server = server
        self.id = device_id
        self.key = Ed25519PrivateKey.generate()
        self.public = base64.b64encode(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        self.credential = None

    def public_key_pem(self, path):
        from cryptography.hazmat.primitives.serialization import PublicFormat as Fmt  # noqa: PLC0415

        path.write_bytes(self.key.public_key().public_bytes(Encoding.PEM, Fmt.SubjectPublicKeyInfo))
        return path

    def enroll(self, token=None):
        unsigned = EnrollRequest(
            device_id=self.id,
            public_key=self.public,
            issued_at=datetime.now(UTC),
            enroll_token=token,
            inventory=PROFILE,
            proof="-",
        )
        proof = base64.b64encode(self.key.sign(enrollment_message(unsigned))).decode()
        body = unsigned.model_copy(update={"proof": proof}).model_dump_json()
        answer = httpx.post(
            f"{self.server.url}/v1/devices/enroll", content=body, headers={"Content-Type": "application/json"},
            trust_env=False,
        )  # fmt: skip
        if answer.status_code == 200:
            self.credential = answer.json()["credential"]
        return answer

    def checkin(self):
        body = CheckinRequest(inventory=PROFILE).model_dump_json()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.credential}"}
        return httpx.post(f"{self.server.url}/v1/devices/checkin", content=body, headers=headers, trust_env=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    case = digits_mlp(root / "digits.onnx", seed=2)
    np.savez(root / "val.npz", x=case.x_val, y=case.y_val)
    return root


def build(model, key, version, release, out, *, extra=()):
    result = cli(
        "bundle", "build", str(model / "digits.onnx"), "--name", "digits", "--version", version,
        "--release", str(release), "--validation", str(model / "val.npz"), "--key", str(key),
        "--no-progress", "-o", str(out), *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("server") / "data")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def bundles(server, model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    key = server.signing_key()
    stranger = cli("keys", "generate", "--out", str(root), "--name", "stranger")
    assert stranger.returncode == 0
    return {
        "1.0.0": build(model, key, "1.0.0", 1, root / "digits-1.0.0.mfb"),
        "1.1.0": build(model, key, "1.1.0", 2, root / "digits-1.1.0.mfb"),
        "1.0.0-other-bytes": build(model, key, "1.0.0", 1, root / "other.mfb", extra=("--max-latency-ms", "9")),
        "untrusted": build(model, root / "stranger.key", "2.0.0", 3, root / "untrusted.mfb"),
    }


@pytest.fixture(scope="module")
def pushed(server, bundles):
    outputs = {}
    for version, progress in (("1.0.0", "--no-progress"), ("1.1.0", "--progress")):
        # TTY_COMPATIBLE makes rich draw the bar as on a terminal, though stderr is a pipe here.
        result = server.admin("push", str(bundles[version]), progress, env=clean_env(TTY_COMPATIBLE="1"))
        assert result.returncode == 0, result.stderr
        outputs[version] = (result.stdout, result.stderr)
    return {**bundles, "outputs": outputs}


def devices_json(server, *args):
    result = server.admin("devices", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return {device["id"]: device for device in json.loads(result.stdout)}


# ----------------------------------------------------------------------------- server init / run


def test_init_prints_the_first_admin_token_once_with_a_warning_and_the_signing_key_paths(server):
    out = server.init_output
    assert TOKEN_LINE.search(out.stdout).group(1).startswith("mfa_")
    assert "shown only this once" in out.stderr
    assert server.signing_key().is_file()
    trusted = re.search(r"trusted public key .*?: (\S+)", out.stdout).group(1)
    assert Path(trusted).read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_init_refuses_an_initialised_directory_and_keeps_its_token(server):
    again = cli("server", "init", "--data", str(server.data))
    assert again.returncode == 1
    assert "[already_initialized]" in again.stderr
    assert server.admin("devices", "list").returncode == 0


def test_run_refuses_a_directory_that_was_never_initialised(tmp_path):
    result = cli("server", "run", "--data", str(tmp_path / "nothing"), "--port", str(free_port()))
    assert result.returncode == 1
    assert "[not_initialized]" in result.stderr


# ----------------------------------------------------------------------------- server, token


def test_commands_fall_back_to_modelfleet_server_and_token_variables(server):
    result = cli(
        "devices", "list", "--json", env=clean_env(MODELFLEET_SERVER=server.url, MODELFLEET_TOKEN=server.token)
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)


@pytest.mark.parametrize(
    ("env", "missing"),
    [({}, "no server"), ({"MODELFLEET_SERVER": "http://127.0.0.1:9"}, "no admin token")],
)
def test_a_missing_server_or_token_is_one_line_and_a_usage_error(env, missing):
    result = cli("devices", "list", env=clean_env(**env))
    assert result.returncode == 2
    assert missing in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_an_unreachable_server_is_a_transport_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("pins", "list", "--server", url, "--token", "mfa_x")
    assert result.returncode == 1
    assert f"{url}/v1/admin/pins" in result.stderr
    assert "[unreachable]" in result.stderr


def test_an_unknown_token_is_refused_with_the_servers_code(server):
    result = server.admin("devices", "list", token="mfa_not-a-token")  # noqa: S106 - a made-up token
    assert result.returncode == 1
    assert "[bad_credential]" in result.stderr


def test_token_create_prints_the_secret_alone_and_the_role_applies(server):
    created = server.admin("token", "create", "--role", "viewer", "--name", "dashboard")
    assert created.returncode == 0, created.stderr
    viewer = created.stdout.strip()
    assert viewer.startswith("mfa_")
    assert "\n" not in viewer
    assert "shown only this once" in created.stderr
    assert server.admin("devices", "list", token=viewer).returncode == 0
    refused = server.admin("token", "create", "--role", "admin", "--name", "escalate", token=viewer)
    assert refused.returncode == 1
    assert "[role_forbidden]" in refused.stderr


def test_token_create_refuses_an_unknown_role_as_usage(server):
    result = server.admin("token", "create", "--role", "root", "--name", "x")
    assert result.returncode == 2
    assert "--role must be one of admin, release-manager, viewer" in result.stderr


# ----------------------------------------------------------------------------- push


def test_push_prints_the_stored_version(pushed):
    assert pushed["outputs"]["1.0.0"][0].startswith("stored digits 1.0.0 (release 1, ")
    assert pushed["outputs"]["1.1.0"][0].startswith("stored digits 1.1.0 (release 2, ")
    assert "sha256 " in pushed["outputs"]["1.0.0"][0]


def test_push_draws_its_progress_bar_on_stderr_only(pushed):
    stdout, stderr = pushed["outputs"]["1.1.0"]
    assert "upload digits-1.1.0.mfb" in stderr
    assert "upload" not in stdout
    assert "upload" not in pushed["outputs"]["1.0.0"][1]


def test_pushing_the_same_bytes_again_answers_the_stored_version(server, pushed):
    again = server.admin("push", str(pushed["1.1.0"]), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already stored (identical bytes) digits 1.1.0 (release 2")
    as_json = server.admin("push", str(pushed["1.1.0"]), "--no-progress", "--json")
    stored = json.loads(as_json.stdout)
    assert (stored["model"], stored["version"], stored["release"]) == ("digits", "1.1.0", 2)


def test_push_refuses_other_bytes_under_a_stored_version_with_the_servers_code(server, pushed):
    result = server.admin("push", str(pushed["1.0.0-other-bytes"]), "--no-progress")
    assert result.returncode == 1
    assert result.stderr.startswith(f"REFUSED the server refused {pushed['1.0.0-other-bytes']}: ")
    assert "1.0.0" in result.stderr
    assert "[version_exists]" in result.stderr


def test_push_refuses_a_bundle_not_signed_by_a_trusted_key(server, pushed):
    result = server.admin("push", str(pushed["untrusted"]), "--no-progress")
    assert result.returncode == 1
    assert result.stderr.startswith(f"REFUSED the server refused {pushed['untrusted']}: ")
    assert "not among the trusted keys" in result.stderr
    assert "this device" not in result.stderr
    assert "[unknown_key]" in result.stderr


def test_push_of_a_missing_file_is_a_usage_error(server, tmp_path):
    assert server.admin("push", str(tmp_path / "nope.mfb")).returncode == 2


# ----------------------------------------------------------------------------- devices


def test_a_pending_device_is_listed_approved_and_then_gets_a_credential(server):
    device = Device(server, "press-0001")
    assert device.enroll().status_code == 202
    assert devices_json(server, "--status", "pending")["press-0001"]["status"] == "pending"
    approved = server.admin("devices", "approve", "press-0001")
    assert approved.returncode == 0, approved.stderr
    assert "approved press-0001" in approved.stdout
    assert device.enroll().status_code == 200
    assert device.checkin().status_code == 200
    assert devices_json(server, "--status", "accepted")["press-0001"]["status"] == "accepted"


def test_approving_an_unknown_device_is_refused(server):
    result = server.admin("devices", "approve", "no-such-device")
    assert result.returncode == 1
    assert "[unknown_device]" in result.stderr


def test_tags_are_set_and_removed_and_filter_the_list(server):
    device = Device(server, "press-0002")
    device.enroll()
    assert server.admin("devices", "approve", "press-0002").returncode == 0
    tagged = server.admin("devices", "tag", "press-0002", "ring=canary", "site=berlin")
    assert tagged.returncode == 0, tagged.stderr
    assert "ring=canary, site=berlin" in tagged.stdout
    removed = server.admin("devices", "tag", "press-0002", "--remove", "site")
    assert removed.returncode == 0, removed.stderr
    assert devices_json(server, "--tag", "ring=canary")["press-0002"]["tags"] == {"ring": "canary"}
    assert "press-0002" not in devices_json(server, "--tag", "ring=stable")


@pytest.mark.parametrize("args", [("press-0002",), ("press-0002", "no-equals-sign")])
def test_tag_without_a_change_or_with_a_bad_pair_is_a_usage_error(server, args):
    assert server.admin("devices", "tag", *args).returncode == 2


def test_a_revoked_device_is_refused_at_once(server):
    device = Device(server, "press-0003")
    device.enroll()
    server.admin("devices", "approve", "press-0003")
    assert device.enroll().status_code == 200
    assert device.checkin().status_code == 200
    revoked = server.admin("devices", "revoke", "press-0003")
    assert revoked.returncode == 0, revoked.stderr
    assert device.checkin().status_code == 401
    assert devices_json(server, "--status", "revoked")["press-0003"]["status"] == "revoked"


def test_a_preauthorized_device_is_accepted_on_its_first_enroll(server, tmp_path):
    device = Device(server, "press-0004")
    result = server.admin(
        "devices", "preauthorize", "press-0004", "--public-key", str(device.public_key_pem(tmp_path / "d.pem"))
    )
    assert result.returncode == 0, result.stderr
    assert "pre-authorized press-0004" in result.stdout
    assert device.enroll().status_code == 200
    assert device.checkin().status_code == 200


def test_preauthorize_refuses_a_file_that_is_not_a_public_key(server, tmp_path):
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    result = server.admin("devices", "preauthorize", "press-0005", "--public-key", str(junk))
    assert result.returncode == 1
    assert "[bad_key_file]" in result.stderr


def test_devices_list_without_json_is_a_table(server):
    Device(server, "press-0006").enroll()
    result = server.admin("devices", "list")
    assert result.returncode == 0, result.stderr
    assert "press-0006" in result.stdout
    assert re.search(r"\d+ device\(s\)", result.stdout)


# ----------------------------------------------------------------------------- enrollment tokens


def test_an_enrollment_token_accepts_devices_with_its_tags_up_to_its_uses(server):
    created = server.admin("enrollment-token", "create", "--uses", "1", "--expires-hours", "2", "--tag", "ring=lab")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("mfe_")
    assert "shown only this once" in created.stderr
    first = Device(server, "lab-0001")
    assert first.enroll(token).status_code == 200
    assert devices_json(server, "--tag", "ring=lab")["lab-0001"]["status"] == "accepted"
    assert Device(server, "lab-0002").enroll(token).status_code == 403


# ----------------------------------------------------------------------------- pins


def desired(device):
    answer = device.checkin()
    assert answer.status_code == 200, answer.text
    return {(d["model"], d["version"]) for d in answer.json()["desired"]}


def test_pins_decide_what_devices_run_and_unpin_removes_them(server, pushed):
    device = Device(server, "pump-0001")
    server.admin(
        "devices", "preauthorize", "pump-0001", "--public-key", str(device.public_key_pem(server.data / "p.pem"))
    )
    device.enroll()
    assert server.admin("devices", "tag", "pump-0001", "ring=canary").returncode == 0

    by_tag = server.admin("pin", "digits", "1.0.0", "--tag", "ring=canary", "--json")
    assert by_tag.returncode == 0, by_tag.stderr
    tag_pin = json.loads(by_tag.stdout)["id"]
    assert desired(device) == {("digits", "1.0.0")}

    by_device = server.admin("pin", "digits", "1.1.0", "--device", "pump-0001")
    assert by_device.returncode == 0, by_device.stderr
    assert "digits 1.1.0 on device pump-0001" in by_device.stdout
    device_pin = int(re.match(r"pin (\d+):", by_device.stdout).group(1))
    assert desired(device) == {("digits", "1.1.0")}

    listed = server.admin("pins", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {tag_pin, device_pin} <= {p["id"] for p in json.loads(listed.stdout)}
    table = server.admin("pins", "list")
    assert "pump-0001" in table.stdout

    assert server.admin("unpin", str(device_pin)).returncode == 0
    assert device_pin not in {p["id"] for p in json.loads(server.admin("pins", "list", "--json").stdout)}
    assert desired(device) == {("digits", "1.0.0")}


@pytest.mark.parametrize("target", [(), ("--device", "pump-0001", "--tag", "ring=canary")], ids=["neither", "both"])
def test_pin_needs_exactly_one_target(server, target):
    result = server.admin("pin", "digits", "1.0.0", *target)
    assert result.returncode == 2
    assert "exactly one of --device ID or --tag key=value" in result.stderr


def test_pinning_a_version_that_was_never_pushed_is_refused(server, pushed):
    result = server.admin("pin", "digits", "9.9.9", "--tag", "ring=canary")
    assert result.returncode == 1
    assert "no bundle digits 9.9.9 [unknown_bundle]" in result.stderr


def test_unpinning_an_unknown_pin_is_refused(server):
    result = server.admin("unpin", "999999")
    assert result.returncode == 1
    assert "[unknown_pin]" in result.stderr


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_one_flow_on_postgresql_with_two_workers(database_url, model, tmp_path):
    server = start_server(tmp_path / "data", db=database_url, workers=2)
    try:
        bundle = build(model, server.signing_key(), "1.0.0", 1, tmp_path / "digits.mfb")
        pushed = server.admin("push", str(bundle), "--no-progress")
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.startswith("stored digits 1.0.0 (release 1")
        token = server.admin("enrollment-token", "create", "--uses", "3", "--tag", "ring=pg").stdout.strip()
        devices = [Device(server, f"pg-{i:04d}") for i in range(3)]
        for device in devices:
            assert device.enroll(token).status_code == 200
        assert server.admin("pin", "digits", "1.0.0", "--tag", "ring=pg").returncode == 0
        assert all(desired(device) == {("digits", "1.0.0")} for device in devices)
        listed = devices_json(server, "--tag", "ring=pg")
        assert sorted(listed) == ["pg-0000", "pg-0001", "pg-0002"]
        assert server.admin("devices", "revoke", "pg-0001").returncode == 0
        assert devices[1].checkin().status_code == 401
    finally:
        stop_server(server)


# ----------------------------------------------------------------------------- rollouts

ROLLOUT_SPEC = """\
model: digits
version: 1.1.0
selector: {fleet: rollout-cli}
stages:
  - {percent: 50, min_duration: 10m}
  - {percent: 100}
gates:
  - {metric: mean_confidence, margin: 0.02}
planning: {device_sd: {mean_confidence: 0.05}}
"""


def test_a_rollout_from_plan_to_fleet_wide_rollback_through_the_cli(server, pushed, tmp_path):
    spec = tmp_path / "rollout.yaml"
    spec.write_text(ROLLOUT_SPEC)
    device = Device(server, "pump-rollout")
    server.admin("devices", "preauthorize", device.id, "--public-key", str(device.public_key_pem(tmp_path / "d.pem")))
    assert device.enroll().status_code == 200
    assert server.admin("devices", "tag", device.id, "fleet=rollout-cli").returncode == 0

    planned = server.admin("rollout", "plan", str(spec))
    assert planned.returncode == 1, "one target device cannot detect a 0.02 margin"
    assert "needs" in planned.stderr
    assert "compared devices but the stage reaches only 0" in planned.stderr
    refused = server.admin("rollout", "start", str(spec))
    assert refused.returncode == 1
    assert "plan_infeasible" in refused.stderr

    started = server.admin("rollout", "start", str(spec), "--force", "--json")
    assert started.returncode == 0, started.stderr
    rollout = json.loads(started.stdout)
    assert (rollout["state"], rollout["baseline_version"]) == ("canary", "1.0.0")
    for command in ("pause", "resume", "rollback"):
        done = server.admin("rollout", command, rollout["id"])
        assert done.returncode == 0, done.stderr
    again = server.admin("rollout", "resume", rollout["id"])
    assert again.returncode == 1
    # no device reports 1.1.0, so the reconciler's next look may already have finished the rollback
    assert re.search(r"'resume' is not allowed while the rollout is (rolling_back|rolled_back)", again.stderr)

    status = server.admin("rollout", "status", rollout["id"], "--json")
    decisions = [(d["event"], d["to_state"]) for d in json.loads(status.stdout)["decisions"]]
    assert decisions[:4] == [
        ("start", "canary"),
        ("pause", "paused"),
        ("resume", "canary"),
        ("rollback", "rolling_back"),
    ]
    assert decisions[4:] in ([], [("rollback_done", "rolled_back")])
    assert "rollback" in server.admin("rollout", "status", rollout["id"]).stdout

    body = {
        "inventory": PROFILE.model_dump(mode="json"),
        "installed": [{"model": "digits", "version": "1.1.0", "release": 2, "state": "committed"}],
    }
    headers = {"Authorization": f"Bearer {device.credential}"}
    time.sleep(1.1)  # the server re-reads started rollouts at most once a second per process
    answer = httpx.post(f"{server.url}/v1/devices/checkin", json=body, headers=headers, trust_env=False).json()
    (wanted,) = answer["desired"]
    assert (wanted["version"], wanted["rollback"], wanted["rollout_id"]) == ("1.0.0", True, rollout["id"])
    # The device follows the rollback, so the reconciler's next look ends it (and the model is free again).
    body["installed"] = [{"model": "digits", "version": "1.0.0", "release": 1, "state": "committed"}]
    httpx.post(f"{server.url}/v1/devices/checkin", json=body, headers=headers, trust_env=False).raise_for_status()
    deadline = time.monotonic() + 60
    while json.loads(server.admin("rollout", "status", rollout["id"], "--json").stdout)["state"] != "rolled_back":
        assert time.monotonic() < deadline, "the rollback did not finish after the device followed it"
        time.sleep(0.5)

    audit = httpx.get(f"{server.url}/v1/admin/audit", headers={"Authorization": f"Bearer {server.token}"},
                      params={"action": "rollout.plan_forced"}, trust_env=False).json()  # fmt: skip
    assert [entry["target"] for entry in audit] == [rollout["id"]]


EXPERIMENT_SPEC = """\
model: digits
selector: {fleet: experiment-cli}
variants:
  - {version: 1.0.0, share: 50}
  - {version: 1.1.0, share: 50}
metrics:
  - {metric: mean_confidence}
minimum_detectable_effect: 0.01
device_sd: 0.05
"""


def test_an_ab_experiment_from_plan_to_stop_through_the_cli(server, pushed, tmp_path):
    spec = tmp_path / "experiment.yaml"
    spec.write_text(EXPERIMENT_SPEC)
    planned = server.admin("experiment", "plan", str(spec))
    assert planned.returncode == 1, "no target device can power it"
    assert "ab:" in planned.stdout
    started = server.admin("experiment", "start", str(spec), "--force", "--json")
    assert started.returncode == 0, started.stderr
    experiment = json.loads(started.stdout)
    status = server.admin("experiment", "status", experiment["id"], "--json")
    assert json.loads(status.stdout)["analysis"]["verdict"] == "inconclusive"
    human = server.admin("experiment", "status", experiment["id"])
    assert f"{experiment['id']} digits (ab): running" in human.stdout
    assert server.admin("experiment", "stop", experiment["id"]).returncode == 0
    again = server.admin("experiment", "stop", experiment["id"])
    assert again.returncode == 1
    assert "is stopped, not running [bad_transition]" in again.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(EXPERIMENT_SPEC.replace("share: 50}", "share: 70}"))
    refused = server.admin("experiment", "start", str(wrong))
    assert refused.returncode == 1
    assert "shares must add up to 100" in refused.stderr
