"""Wake-ups: tell a device over MQTT to check in now instead of at its next poll.

A wake-up is only a hint: the device still learns what to do from its check-in, so
a lost wake-up costs one poll interval and a repeated one costs one check-in. The
MQTT publisher connects lazily on the first wake-up and lets paho reconnect in the
background; :meth:`WakePublisher.wake` answers whether the broker acknowledged the
message (QoS 1) within ``publish_timeout_s``, never hanging an admin request.
Any client allowed to publish on the broker can wake a device, which costs it one
check-in at most every second (the agent's floor); restrict publishing to
``modelfleet/devices/+/wake`` with the broker's ACLs.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from modelfleet.errors import ConfigError
from modelfleet.protocol import WAKE_QOS, MqttEndpoint, wake_topic

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["MqttWakePublisher", "NoWakePublisher", "WakeOut", "WakePublisher", "wake_publisher"]

logger = logging.getLogger(__name__)


class WakeOut(BaseModel):
    """The answer of ``POST /v1/admin/devices/{id}/wake``: was the wake-up sent, and what happened."""

    device_id: str
    sent: bool
    detail: str


class WakePublisher(abc.ABC):
    """Sends wake-ups to devices."""

    @abc.abstractmethod
    def wake(self, device_id: str) -> WakeOut:
        """Ask ``device_id`` to check in now; ``sent`` when the message left for the device."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""


class NoWakePublisher(WakePublisher):
    """No broker configured: devices learn of changes at their next poll."""

    def wake(self, device_id: str) -> WakeOut:
        """Send nothing."""
        detail = "no MQTT broker is configured (mqtt_url); the device checks in at its next poll"
        return WakeOut(device_id=device_id, sent=False, detail=detail)


class MqttWakePublisher(WakePublisher):
    """Publishes wake-ups to ``modelfleet/devices/<id>/wake`` on one broker.

    Args:
        url: the broker, ``mqtt://host:port`` or ``mqtts://host:port``.
        publish_timeout_s: longest wait for the connection and the broker's acknowledgement.

    Raises:
        ConfigError: ``bad_mqtt_url``, or ``mqtt_unavailable`` when ``paho-mqtt`` is not installed.
    """

    def __init__(self, url: str, *, publish_timeout_s: float = 2.0) -> None:
        try:
            self.endpoint = MqttEndpoint.parse(url)
        except ValueError as exc:
            raise ConfigError(str(exc), code="bad_mqtt_url") from None
        if importlib.util.find_spec("paho") is None:  # optional extra: fail at startup, not at the first wake-up
            msg = "mqtt_url is set but paho-mqtt is not installed (pip install 'modelfleet[mqtt]')"
            raise ConfigError(msg, code="mqtt_unavailable")
        self._timeout = publish_timeout_s
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()

    def wake(self, device_id: str) -> WakeOut:
        """Publish one wake-up; not ``sent`` when the broker did not take it in time (the device still polls)."""
        client = self._started()
        topic = wake_topic(device_id)
        if not self._connected.wait(self._timeout):
            where = f"{self.endpoint.host}:{self.endpoint.port}"
            return WakeOut(device_id=device_id, sent=False, detail=f"MQTT broker {where} is unreachable")
        info = client.publish(topic, b"", qos=WAKE_QOS)
        try:
            info.wait_for_publish(self._timeout)
        except (RuntimeError, ValueError) as exc:
            return WakeOut(device_id=device_id, sent=False, detail=f"MQTT publish failed: {exc}")
        if not info.is_published():
            detail = f"MQTT broker did not acknowledge within {self._timeout:g} s"
            return WakeOut(device_id=device_id, sent=False, detail=detail)
        return WakeOut(device_id=device_id, sent=True, detail=f"published to {topic}")

    def close(self) -> None:
        """Disconnect and end the network thread."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _started(self) -> paho.Client:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> paho.Client:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - optional extra
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415 - optional extra

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"modelfleet-server-{uuid.uuid4().hex[:12]}"
        )
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            client.tls_set()
        client.reconnect_delay_set(1, 60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()
        return client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:  # noqa: ANN401, ARG002 - paho's signature
        if reason.is_failure:
            logger.warning("MQTT broker refused the connection: %s", reason)
            return
        self._connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:  # noqa: ANN401, ARG002 - paho's signature
        self._connected.clear()
        if self._client is not None:  # not a close() of ours
            logger.warning("MQTT broker connection lost (%s); reconnecting", reason)


def wake_publisher(mqtt_url: str | None) -> WakePublisher:
    """The publisher for a server config's ``mqtt_url`` (a no-op one without a broker)."""
    return MqttWakePublisher(mqtt_url) if mqtt_url else NoWakePublisher()
