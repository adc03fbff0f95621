"""What importing the agent costs, and that it runs without its optional MQTT extra (in fresh interpreters)."""

import subprocess
import sys
import textwrap

from modelfleet.agent import CredentialFile, DeviceIdentity
from modelfleet.bundle import SigningKey


def run(code):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_importing_the_agent_loads_neither_numpy_nor_onnx_runtime():
    loaded = run(
        """
        import sys, modelfleet.agent
        print(*(name for name in ("numpy", "onnxruntime", "paho") if name in sys.modules))
        print("ORT_DISABLE_TELEMETRY=" + __import__("os").environ.get("ORT_DISABLE_TELEMETRY", ""))
        """
    )
    assert loaded == ["ORT_DISABLE_TELEMETRY=1"]


HEAVY = ("numpy", "onnxruntime", "onnx", "scipy", "sklearn", "sqlalchemy", "fastapi", "ml_dtypes")
SERVER_SIDE = ("modelfleet.server", "modelfleet.store", "modelfleet.rollout", "modelfleet.stats", "modelfleet.sim")
# What the idle loop of an enrolled agent does without (ADR 0011): about 17 MB between them.
IDLE_SPARES = ("httpx", "cryptography", "rich", "typer", "argparse")


def test_the_agent_loop_loads_no_model_runtime_nor_server_code():
    # What an idle device runs: the loop, its client, installer, outbox and wake listener (no model loaded yet).
    loaded = run(
        f"""
        import sys
        from modelfleet.agent import Agent, AgentConfig, Installer, Outbox, SlotStore, WakeListener, agent_status
        print(*(name for name in {HEAVY + SERVER_SIDE!r} if name in sys.modules))
        """
    )
    assert loaded == []


def test_an_enrolled_agent_checks_in_without_http_library_cryptography_or_the_command_line(tmp_path):
    # The steady state of a device: restarted with its identity and credential, checking in (a refused
    # connection here: the step up to the request is the same), holding no model.
    DeviceIdentity.generate("idle-01").save(tmp_path)
    CredentialFile(tmp_path).save("mfd_secret")
    pem = SigningKey.generate().public.to_pem().decode()
    loaded = run(
        f"""
        import sys
        from pathlib import Path
        from modelfleet.agent import Agent, AgentConfig
        config = AgentConfig(server="http://127.0.0.1:9", device_id="idle-01", trusted_keys=({pem!r},))
        with Agent(Path({str(tmp_path)!r}), config) as agent:
            assert agent.client.credential == "mfd_secret"
            assert not agent.step().ok
        print(*(name for name in {IDLE_SPARES!r} if name in sys.modules))
        """
    )
    assert loaded == []


def test_verifying_and_reading_bundles_loads_neither_numpy_nor_onnx():
    loaded = run(
        f"""
        import sys
        from modelfleet.bundle import Manifest, TrustedKeys, check_compatibility, read_bundle, verify_signatures
        from modelfleet.telemetry import Event, Summary
        print(*(name for name in {HEAVY!r} if name in sys.modules))
        """
    )
    assert loaded == []


def test_the_builder_and_summarizer_still_load_on_first_use():
    out = run(
        """
        import sys
        from modelfleet.bundle import build_bundle
        from modelfleet.telemetry import Summarizer
        print("onnx" in sys.modules, "numpy" in sys.modules, build_bundle.__module__, Summarizer.__module__)
        """
    )
    assert out == ["True", "True", "modelfleet.bundle._build", "modelfleet.telemetry._summarizer"]


def test_without_paho_the_wake_listener_declines_and_the_agent_still_wakes():
    # paho-mqtt is installed in this environment; blocking its import stands in for a device without the extra.
    out = run(
        """
        import sys, threading
        sys.modules["paho"] = None
        from modelfleet.agent._wake import WakeListener
        woken = threading.Event()
        listener = WakeListener("mqtt://127.0.0.1:1883", "no-paho-01", woken.set)
        print(listener.start(), listener.subscribed.is_set())
        listener.stop()
        """
    )
    assert out == ["False", "False"]
