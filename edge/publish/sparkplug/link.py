"""The edge node's own broker connection, and its bdSeq kept across restarts.

A second MQTT connection beside the station's link (edge.publish.mqtt), because an MQTT connection has one will:
the station's is its retained ``status`` ``offline`` (Home Assistant's availability), a Sparkplug edge node's must be
its NDEATH. Everything else (TLS, credentials, backoff, sessions, acknowledgements) is the station link's.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from edge.core.files import read_limited, write_bytes_atomic
from edge.publish.mqtt import MqttLink
from edge.publish.sparkplug.payloads import BDSEQ_MODULUS, NAMESPACE, Topics, node_death, rebirth_requested

if TYPE_CHECKING:
    from edge.config.broker import MqttConfig

logger = logging.getLogger(__name__)

DEATH_QOS = 1  # the spec's for the will
COMMAND_QOS = 1  # the spec's for the NCMD subscription
BDSEQ_FILE_MAX_BYTES = 64


class BdSeqStore:
    """The bdSeq of the last connection the broker accepted, in a small file, so the next start goes on from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = self._load()  # -1: never connected, so the first connection's bdSeq is 0

    def _load(self) -> int:
        try:
            text = read_limited(self.path, BDSEQ_FILE_MAX_BYTES).decode("ascii").strip()
        except FileNotFoundError:
            return -1
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("%s: cannot read the Sparkplug bdSeq (%s); starting again from 0", self.path, exc)
            return -1
        if not text.isdigit() or int(text) >= BDSEQ_MODULUS:
            logger.warning("%s holds %r, not a bdSeq 0..%d; starting again from 0", self.path, text[:16],
                           BDSEQ_MODULUS - 1)
            return -1
        return int(text)

    def following(self, value: int | None) -> int:
        """The bdSeq after ``value`` (None: after the last stored one)."""
        return ((self.last if value is None else value) + 1) % BDSEQ_MODULUS

    def used(self, value: int) -> None:
        """A connection with this bdSeq was accepted: store it (a failure is logged; the session goes on)."""
        self.last = value
        try:
            write_bytes_atomic(self.path, f"{value}\n".encode("ascii"))
        except OSError as exc:
            logger.error("%s: cannot store the Sparkplug bdSeq %d: %s", self.path, value, exc.strerror or exc)


class SparkplugLink(MqttLink):
    """The node's connection: its will is the NDEATH with this connection's bdSeq (one more on every CONNECT, and
    stored once accepted); it subscribes to the node's NCMD, and ``on_rebirth()`` hears a rebirth request (network
    thread). A clean stop publishes the NDEATH before it disconnects. Births and data go out through
    edge.publish.sparkplug.sender."""

    def __init__(self, config: MqttConfig, topics: Topics, bdseq: BdSeqStore, on_rebirth: Callable[[], None], *,
                 client_id: str, password: str | None = None) -> None:
        super().__init__(config, f"{NAMESPACE}/{topics.group}", client_id=client_id, password=password)
        self.topics = topics
        self._bdseq = bdseq
        self._on_rebirth = on_rebirth
        self._sent_bdseq: int | None = None  # the bdSeq of the latest CONNECT that went out (None: none yet)
        self._attempt_bdseq: int | None = None  # that of the latest attempt, which may not have reached the broker
        self._attempt_failed = False
        self.session_bdseq: int | None = None  # that of the connection now up: its NBIRTH carries it

    @property
    def inflight_limit(self) -> int:
        """How many QoS 1 messages paho sends before it queues the rest (over MQTT 5, the broker's Receive Maximum);
        0 for no limit."""
        client = self._client
        return client.max_inflight_messages if client is not None else self.config.max_inflight

    def _make_client(self) -> mqtt.Client:
        client = super()._make_client()
        client.on_pre_connect = self._on_pre_connect
        return client

    def _on_pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this before every attempt to connect: each CONNECT that goes out carries a fresh bdSeq.
        if self._attempt_bdseq is not None and not self._attempt_failed:
            self._sent_bdseq = self._attempt_bdseq
        self._attempt_bdseq, self._attempt_failed = self._bdseq.following(self._sent_bdseq), False
        client.will_set(self.topics.of_node("NDEATH"), node_death(self._attempt_bdseq), qos=DEATH_QOS,
                        retain=False)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # No connection, so no CONNECT went out: the next attempt carries this bdSeq again.
        super()._on_connect_fail(client, userdata)
        self._attempt_failed = True

    def _open_session(self, client: mqtt.Client) -> None:
        self.session_bdseq = self._attempt_bdseq
        self._bdseq.used(self.session_bdseq)
        client.subscribe(self.topics.of_node("NCMD"), qos=COMMAND_QOS)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: list,
                      properties: object) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("broker refused the Sparkplug NCMD subscription %s: %s", self.topics.of_node("NCMD"),
                         ", ".join(map(str, reason_codes)))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic != self.topics.of_node("NCMD") or message.retain:
                return
            wanted = rebirth_requested(message.payload)
        except (UnicodeDecodeError, ValueError) as exc:
            logger.warning("ignoring an NCMD that is not a Sparkplug payload: %s", exc)
            return
        if wanted:
            logger.info("Sparkplug rebirth requested by NCMD")
            self._on_rebirth()

    def _publish_final_status(self, client: mqtt.Client, clean: bool, timeout_s: float) -> None:
        """Before a stop's DISCONNECT (which discards the will): the NDEATH, as the will would have said it."""
        if self.session_bdseq is None:
            return
        info = client.publish(self.topics.of_node("NDEATH"), node_death(self.session_bdseq), qos=DEATH_QOS)
        if not clean:
            return
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            logger.warning("could not publish the Sparkplug NDEATH: %s", exc)
