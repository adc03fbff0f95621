"""What importing the agent costs, and that it runs without its optional MQTT extra (in fresh interpreters)."""

import subprocess
import sys
import textwrap


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
