"""Optional MQTT wake-up: the server says "check in now" instead of waiting for the next poll.

The device subscribes to ``modelfleet/devices/<id>/wake`` (QoS 1) and, on any
message, calls ``on_wake`` (the agent ends its poll sleep). The payload is ignored:
a wake-up carries no instruction, so a forged one costs at most a check-in, and the
agent bounds how often it acts on them. Polling stays the source of truth; without
a broker, or without ``paho-mqtt`` installed (extra ``mqtt``), the agent polls as
before. paho's network thread reconnects with exponential backoff
(``min_reconnect_s`` doubling to ``max_reconnect_s``) and the subscription is made
again on every connect, so a broker restart is survived without a device restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError
from modelfleet.protocol import WAKE_QOS, MqttEndpoint, wake_topic

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["WakeListener"]

logger = logging.getLogger(__name__)


class WakeListener:
    """Listens for the server's wake-ups on one device's topic.

    Args:
        url: the broker, ``mqtt://host:port`` or ``mqtts://host:port``.
        device_id: whose topic to subscribe to.
        on_wake: called from paho's network thread for each wake-up; must be quick.
        min_reconnect_s: first wait before reconnecting after the broker went away.
        max_reconnect_s: longest wait between reconnects.
        keepalive_s: MQTT keepalive; a silent broker is noticed after 1.5 times this.

    Raises:
        ConfigError: ``bad_mqtt_url`` when ``url`` is not a broker URL.
    """

    def __init__(
        self,
        url: str,
        device_id: str,
        on_wake: Callable[[], None],
        *,
        min_reconnect_s: int = 1,
        max_reconnect_s: int = 60,
        keepalive_s: int = 30,
    ) -> None:
        try:
            self.endpoint = MqttEndpoint.parse(url)
        except ValueError as exc:
            raise ConfigError(str(exc), code="bad_mqtt_url") from None
        self.topic = wake_topic(device_id)
        self._device_id = device_id
        self._on_wake = on_wake
        self._reconnect = (max(min_reconnect_s, 1), max(max_reconnect_s, min_reconnect_s, 1))
        self._keepalive = keepalive_s
        self._client: paho.Client | None = None
        self.subscribed = threading.Event()
        """Set while the subscription is acknowledged by the broker; cleared on a disconnect."""
        self.wakeups = 0
        """Wake-up messages received (for status and tests)."""

    def start(self) -> bool:
        """Connect in the background (retrying until the broker answers); ``False`` without ``paho-mqtt``."""
        if self._client is not None:
            return True
        try:
            import paho.mqtt.client as mqtt  # noqa: PLC0415 - optional extra, only when a broker is configured
            from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415 - as above
        except ImportError:
            logger.warning("MQTT wake-up needs paho-mqtt (pip install 'modelfleet[mqtt]'); polling only")
            return False
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"modelfleet-agent-{self._device_id}",
            clean_session=True,
        )
        endpoint = self.endpoint
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            client.tls_set()
        client.reconnect_delay_set(*self._reconnect)
        client.on_connect = self._connected
        client.on_subscribe = self._acknowledged
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.connect_async(endpoint.host, endpoint.port, keepalive=self._keepalive)
        client.loop_start()  # paho's thread retries the first connection too, with the same backoff
        self._client = client
        logger.info("listening for wake-ups on %s:%d %s", endpoint.host, endpoint.port, self.topic)
        return True

    def stop(self) -> None:
        """Disconnect and end the network thread."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self.subscribed.clear()

    # ------------------------------------------------------------ paho callbacks (network thread)

    def _connected(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:  # noqa: ANN401, ARG002 - paho's signature
        if reason.is_failure:
            logger.warning("MQTT broker refused the connection: %s", reason)
            return
        client.subscribe(self.topic, qos=WAKE_QOS)

    def _acknowledged(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:  # noqa: ANN401, ARG002 - paho's signature
        if all(not reason.is_failure for reason in reasons):
            self.subscribed.set()
            logger.info("subscribed to %s", self.topic)
        else:
            logger.warning("MQTT broker refused the subscription to %s: %s", self.topic, reasons)

    def _disconnected(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:  # noqa: ANN401, ARG002 - paho's signature
        self.subscribed.clear()
        if self._client is not None:
            logger.warning("MQTT broker connection lost (%s); reconnecting with backoff", reason)

    def _message(self, client: paho.Client, userdata: Any, message: Any) -> None:  # noqa: ANN401, ARG002 - paho's signature
        self.wakeups += 1
        self._on_wake()
