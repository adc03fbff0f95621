"""MQTT wake-ups against a real Mosquitto: the shared broker on 127.0.0.1:1883, and a private one
this module starts and kills to show the listener reconnects.

Waits are bounded loops on events, never timing assertions. Under ``CI=true`` a missing
broker fails the tests; elsewhere they are skipped with the reason (``broker_url`` in conftest).
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.agent import Agent, AgentConfig
from modelfleet.agent._wake import WakeListener
from modelfleet.bundle import DeviceProfile, SigningKey
from modelfleet.errors import ConfigError
from modelfleet.protocol import MqttEndpoint, wake_topic
from modelfleet.server._wake import MqttWakePublisher, NoWakePublisher

WAIT_S = 20.0


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


class PrivateBroker:
    """A Mosquitto process of this test on a port of its own, to stop and start again."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary, self.port = binary, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + WAIT_S
        while not _reachable("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _reachable("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_broker(mosquitto_binary: str) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(mosquitto_binary, _free_port())
    broker.start()
    yield broker
    broker.stop()


class Wakes:
    """Counts wake-ups; ``wait(n)`` waits (bounded) until ``n`` arrived."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, n: int) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.count >= n, timeout=WAIT_S)
            return self.count


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", MqttEndpoint("127.0.0.1", 1883)),
        ("mqtt://broker.lan", MqttEndpoint("broker.lan", 1883)),
        ("mqtts://broker.lan", MqttEndpoint("broker.lan", 8883, tls=True)),
        ("mqtt://dev%40x:p%3Aw@h:1900", MqttEndpoint("h", 1900, username="dev@x", password="p:w")),  # noqa: S106 - a test URL
    ],
)
def test_broker_urls_are_parsed(url: str, expected: MqttEndpoint) -> None:
    assert MqttEndpoint.parse(url) == expected


@pytest.mark.parametrize("url", ["http://h:1883", "mqtt://", "mqtt://h:notaport", "mqtt://h/some/path"])
def test_a_bad_broker_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WakeListener(url, "pi-01", lambda: None)
    assert caught.value.code == "bad_mqtt_url"


def test_the_topic_names_the_device() -> None:
    assert wake_topic("pi-agent-01") == "modelfleet/devices/pi-agent-01/wake"


def test_a_published_wake_up_reaches_only_its_device(broker_url: str) -> None:
    mine, other = Wakes(), Wakes()
    listeners = [WakeListener(broker_url, "wake-me-01", mine), WakeListener(broker_url, "not-me-01", other)]
    publisher = MqttWakePublisher(broker_url)
    try:
        for listener in listeners:
            assert listener.start()
            assert listener.subscribed.wait(WAIT_S)
        answer = publisher.wake("wake-me-01")
        assert answer.sent, answer.detail
        assert mine.wait(1) == 1
        # A second device's wake-up proves delivery works for it too, and that the first got none.
        assert publisher.wake("not-me-01").sent
        assert other.wait(1) == 1
        assert mine.count == 1
    finally:
        publisher.close()
        for listener in listeners:
            listener.stop()


def test_the_listener_resubscribes_after_the_broker_restarts(private_broker: PrivateBroker) -> None:
    wakes = Wakes()
    listener = WakeListener(private_broker.url, "restart-01", wakes, min_reconnect_s=1, max_reconnect_s=2)
    try:
        assert listener.start()
        assert listener.subscribed.wait(WAIT_S)
        private_broker.stop()
        deadline = time.monotonic() + WAIT_S
        while listener.subscribed.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not listener.subscribed.is_set()  # it noticed the broker went away
        private_broker.start()
        assert listener.subscribed.wait(WAIT_S)  # reconnected and subscribed again, no restart
        publisher = MqttWakePublisher(private_broker.url)
        try:
            assert publisher.wake("restart-01").sent
        finally:
            publisher.close()
        assert wakes.wait(1) == 1
    finally:
        listener.stop()


def test_an_unreachable_broker_is_reported_not_raised() -> None:
    publisher = MqttWakePublisher(f"mqtt://127.0.0.1:{_free_port()}", publish_timeout_s=0.5)
    try:
        answer = publisher.wake("pi-agent-01")
    finally:
        publisher.close()
    assert not answer.sent
    assert "unreachable" in answer.detail


def test_without_a_broker_nothing_is_sent() -> None:
    answer = NoWakePublisher().wake("pi-agent-01")
    assert (answer.sent, "next poll" in answer.detail) == (False, True)


def _offline_agent(tmp_path: Path, device: DeviceProfile, mqtt_url: str | None) -> Agent:
    """An agent whose server is a closed port: every step fails and backs off (up to its poll interval)."""
    pem = SigningKey.generate().public.to_pem().decode()
    config = AgentConfig(
        server=f"http://127.0.0.1:{_free_port()}", device_id="offline-01", trusted_keys=(pem,), mqtt_url=mqtt_url
    )
    return Agent(tmp_path / "agent", config, profile=device, rng=_Longest(), backoff_base_s=600.0, backoff_cap_s=600.0)


class _Longest(random.Random):
    """Jitter that always picks the longest wait, so only a wake-up can explain an early step."""

    def uniform(self, a: float, b: float) -> float:  # noqa: ARG002 - random.Random's signature
        return b


def _steps_in_background(agent: Agent, stop: threading.Event) -> tuple[threading.Thread, list[float]]:
    """Run the loop in a thread, recording the start time of every step."""
    starts: list[float] = []
    original = agent.step

    def step() -> object:
        starts.append(time.monotonic())
        return original()

    agent.step = step  # type: ignore[method-assign]
    thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
    thread.start()
    return thread, starts


def _wait_for(condition: object, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


def test_wake_ends_the_sleep_and_stop_still_ends_the_loop(tmp_path: Path, device: DeviceProfile) -> None:
    agent = _offline_agent(tmp_path, device, None)
    stop = threading.Event()
    with agent:
        thread, starts = _steps_in_background(agent, stop)
        assert _wait_for(lambda: len(starts) == 1)
        agent.wake()
        assert _wait_for(lambda: len(starts) == 2)  # the backoff is up to 300 s: only the wake-up explains it
        stop.set()
        thread.join(WAIT_S)
        assert not thread.is_alive()


def test_an_mqtt_wake_up_makes_the_agent_step_at_once(tmp_path: Path, device: DeviceProfile, broker_url: str) -> None:
    agent = _offline_agent(tmp_path, device, broker_url)
    stop = threading.Event()
    publisher = MqttWakePublisher(broker_url)
    with agent:
        thread, starts = _steps_in_background(agent, stop)
        listener = agent.wake_listener
        assert listener is not None
        assert listener.subscribed.wait(WAIT_S)
        assert _wait_for(lambda: len(starts) == 1)
        try:
            assert publisher.wake("offline-01").sent
        finally:
            publisher.close()
        assert _wait_for(lambda: len(starts) == 2)
        stop.set()
        thread.join(WAIT_S)
    assert listener.wakeups == 1
    assert not listener.subscribed.is_set()  # closing the agent closed the listener


def test_without_a_broker_the_agent_keeps_polling(tmp_path: Path, device: DeviceProfile) -> None:
    agent = _offline_agent(tmp_path, device, f"mqtt://127.0.0.1:{_free_port()}")
    stop = threading.Event()
    with agent:
        thread, starts = _steps_in_background(agent, stop)
        assert _wait_for(lambda: len(starts) == 1)
        listener = agent.wake_listener
        assert listener is not None
        assert not listener.subscribed.is_set()
        agent.wake()  # the loop itself is unharmed by the missing broker
        assert _wait_for(lambda: len(starts) == 2)
        stop.set()
        thread.join(WAIT_S)
        assert not thread.is_alive()
