"""An MQTT 5 subscriber that keeps each message's user properties, as a dashboard built on MQTT 5 sees them."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

SUBSCRIBE_TIMEOUT_S = 5.0


class Received5(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    user_properties: dict[str, str]


class Mqtt5Collector:
    """Subscribes over MQTT 5 and records every message with its user properties."""

    def __init__(self, host: str, port: int, topics: Iterable[str]) -> None:
        self.topics = list(topics)
        self._messages: list[Received5] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.topics])
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, clean_start=True)
        self._client.loop_start()
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            self.close()
            raise TimeoutError(f"MQTT 5 collector could not subscribe to {self.topics}")

    def _on_message(self, client, userdata, message) -> None:
        properties = getattr(message.properties, "UserProperty", None) or []
        with self._changed:
            self._messages.append(Received5(message.topic, message.payload, bool(message.retain), dict(properties)))
            self._changed.notify_all()

    @property
    def messages(self) -> list[Received5]:
        with self._changed:
            return list(self._messages)

    def wait_for(self, condition: Callable[[list[Received5]], bool], timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: condition(self._messages), timeout_s)

    def publish(self, topic: str, payload: bytes | str) -> None:
        """Publish at QoS 1 through this connection and wait until it is sent."""
        self._client.publish(topic, payload, qos=1).wait_for_publish(SUBSCRIBE_TIMEOUT_S)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
