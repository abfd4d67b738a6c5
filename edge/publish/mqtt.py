"""The daemon's MQTT link (paho-mqtt 2.x).

:class:`MqttLink` owns the only broker connection: it keeps the retained
``<base>/status`` topic truthful (``online``, else ``offline``: on a clean stop
and as the last will, the payloads Home Assistant's availability expects),
receives commands under ``<base>/cmd/`` and reconnects with backoff on its own.
edge.publish.sender drains the durable outbox through it. MQTT 5 by default
(``mqtt.protocol``), so heatmaps can carry user properties; 3.1.1 on request.
The paho client itself (TLS, backoff, last will, TCP_NODELAY) is set up by edge.publish.mqtt_client.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.publish import messages
from edge.publish.mqtt_client import build_client

if TYPE_CHECKING:
    from edge.config.broker import MqttConfig

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger(f"{__name__}.paho")

STATUS_SUBTOPIC = messages.STATUS
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_QOS = 1
COMMAND_SUBTOPIC = messages.COMMAND
COMMAND_QOS = 1
TOPIC_WILDCARDS = ("+", "#")

ConnectionListener = Callable[[bool, str], None]
# (session, mid, accepted): session is the MqttLink.session the ack arrived in.
PublishListener = Callable[[int | None, int, bool], None]


class MqttLink:
    """The daemon's only connection to the broker.

    ``base_topic`` is ``"<topic_prefix>/<device_id>"``. Commands published on
    ``<base_topic>/cmd/<name>`` reach ``on_command(name, payload)`` on the
    network thread, so the handler must be quick; it must not raise, but if it
    does the error is logged and the link keeps running. Retained commands are
    ignored so a stale command is never replayed on reconnect.
    ``on_connection_change(connected, reason)`` reports every connect, disconnect
    and refused connection attempt.

    ``config`` is the mqtt section as validated; the password (resolved by
    edge.config.secrets, never part of the config) is kept out of logs.
    """

    def __init__(
        self,
        config: MqttConfig,
        base_topic: str,
        on_command: Callable[[str, bytes], None] | None = None,
        on_connection_change: Callable[[bool, str], None] | None = None,
        *,
        client_id: str,
        password: str | None = None,
    ) -> None:
        _check_base_topic(base_topic)
        self.config = config
        self.client_id = client_id
        self._password = password
        self.base_topic = base_topic
        self.status_topic = messages.topic(base_topic, STATUS_SUBTOPIC)
        self._command_prefix = messages.topic(base_topic, f"{COMMAND_SUBTOPIC}/")
        self._on_command = on_command
        self._connection_listeners: list[ConnectionListener] = []
        self._publish_listeners: list[PublishListener] = []
        if on_connection_change is not None:
            self._connection_listeners.append(on_connection_change)
        # Guards _session: a tracked publish and a connection change never interleave.
        self._lock = threading.Lock()
        self._session: int | None = None
        self._sessions_started = 0
        self._connected_event = threading.Event()
        self._first_attempt_done = threading.Event()  # connected, refused or unreachable
        self._client: mqtt.Client | None = None
        self._stopping = False
        self._unreachable_reported = False
        self.last_error: str | None = None  # the last refusal or outage, in words; kept after a reconnect

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; returns at once, even if the broker is down."""
        if self._client is not None:
            raise RuntimeError("MqttLink already started")
        client = self._make_client()
        self._stopping = False
        config = self.config
        logger.info(
            "connecting to broker %s:%d as %r (tls %s, %s)",
            config.host, config.port, self.client_id,
            "on" if config.tls.enabled else "off",
            f"user {config.username!r}" if config.username else "no user name",
        )
        # Set before the network thread starts: on_connect may fire at once and
        # publish_in_session needs the client.
        self._client = client
        try:
            client.connect_async(config.host, config.port, keepalive=config.keepalive_s,
                                 clean_start=True if config.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
            client.loop_start()
        except Exception:
            self._client = None
            raise

    def check_files(self) -> None:
        """Load the TLS files as start() would, without connecting; raises OSError or ValueError."""
        self._make_client()

    def stop(self, clean: bool = True, timeout_s: float = 5.0) -> None:
        """Disconnect and stop the network thread.

        Both publish a retained ``offline`` status, as the last will would;
        ``clean=True`` waits up to ``timeout_s`` for the broker to acknowledge it,
        ``clean=False`` (a stop caused by a fault) does not wait. Whether a stop
        was planned shows on the retained state topic (edge.publish.reporter).
        """
        client = self._client
        if client is None:
            return
        self._stopping = True
        if self.connected:
            self._publish_final_status(client, clean, timeout_s)
        client.disconnect()
        client.loop_stop()
        self._client = None
        self._mark_disconnected("stopped by the daemon")

    @property
    def password(self) -> str | None:
        """The password this link authenticates with, to tell whether a reload changed it."""
        return self._password

    @property
    def connected(self) -> bool:
        """True while a broker connection is up (CONNACK accepted)."""
        return self._session is not None

    @property
    def session(self) -> int | None:
        """Id of the current broker connection (new on every reconnect), None while disconnected."""
        return self._session

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or ``timeout_s`` elapsed; return whether connected."""
        return self._connected_event.wait(timeout_s)

    def wait_first_attempt(self, timeout_s: float) -> bool:
        """Block until the first connection attempt succeeded or failed, at most ``timeout_s``; return whether connected."""
        self._first_attempt_done.wait(timeout_s)
        return self.connected

    # -- publishing -----------------------------------------------------------

    def publish(self, subtopic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                user_properties: list[tuple[str, str]] = ()) -> bool:
        """Fire-and-forget publish on ``<base_topic>/<subtopic>``, for status, stats, heatmaps and replies.

        Dropped (returns False) while disconnected; anything that must not be lost goes through the outbox.
        ``user_properties`` go out with MQTT 5 only (a 3.1.1 link has nowhere to put them)."""
        return self.publish_topic(messages.topic(self.base_topic, subtopic), payload, qos, retain, user_properties)

    def publish_topic(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                      user_properties: list[tuple[str, str]] = ()) -> bool:
        """:meth:`publish` on a full topic (Home Assistant's discovery topics live outside the base topic)."""
        client = self._client
        if client is None or not self.connected:
            logger.debug("not connected, dropping message on %s", topic)
            return False
        properties = None
        if user_properties and self.config.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = list(user_properties)
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            logger.debug("publish on %s failed: %s", topic, mqtt.error_string(info.rc))
            return False
        return True

    def publish_in_session(self, session: int | None, topic: str, payload: bytes, qos: int) -> int | None:
        """Publish on a full topic only if ``session`` is still the current connection.

        Returns the paho message id to match against publish listeners, or None
        when the connection changed or the client refused the message.
        Raises ValueError for a message that can never be published (bad topic, qos or size).
        """
        with self._lock:
            client = self._client
            if session is None or session != self._session or client is None:
                return None
            info = client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Also call ``listener(connected, reason)`` on every connection change (network thread)."""
        self._connection_listeners.append(listener)

    def remove_connection_listener(self, listener: ConnectionListener) -> None:
        """Undo :meth:`add_connection_listener`."""
        self._connection_listeners.remove(listener)

    def add_publish_listener(self, listener: PublishListener) -> None:
        """Call ``listener(session, mid, accepted)`` when the broker acknowledges a message."""
        self._publish_listeners.append(listener)

    def remove_publish_listener(self, listener: PublishListener) -> None:
        """Undo :meth:`add_publish_listener`."""
        self._publish_listeners.remove(listener)

    # -- paho plumbing --------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = build_client(self.config, self.client_id, self._password,
                              will=(self.status_topic, STATUS_OFFLINE, STATUS_QOS))
        client.on_log = self._on_log
        client.on_connect_fail = self._on_connect_fail
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            logger.error(
                "broker %s:%d refused the connection: %s",
                self.config.host, self.config.port, reason_code,
            )
            self.last_error = refusal_text(reason_code)
            self._mark_disconnected(f"refused: {reason_code}", always_notify=True)
            self._first_attempt_done.set()
            return
        # Whatever paho still holds from the previous connection is re-sent by
        # OutboxSender from the outbox, in order; a replay by paho as well would
        # interleave two streams.
        client.drop_out_messages()
        # paho ignores an MQTT 5 broker's Receive Maximum (absent: 65,535), and its setter refuses an open link:
        if self.config.protocol == "5":  # nothing is in flight yet (dropped above), so set it directly
            client._max_inflight_messages = min(self.config.max_inflight, getattr(properties, "ReceiveMaximum", 65535))
        self._open_session(client)
        with self._lock:
            self._sessions_started += 1
            self._session = self._sessions_started
        self._unreachable_reported = False
        self._connected_event.set()
        self._first_attempt_done.set()
        logger.info("connected to broker %s:%d", self.config.host, self.config.port)
        self._notify_connection(True, str(reason_code))

    def _open_session(self, client: mqtt.Client) -> None:
        """What a new connection sends before anything else (network thread, before listeners hear of it)."""
        # Subscribe first: the broker handles a client's packets in order, so a
        # dashboard that sees "online" can send a command and it is not missed.
        client.subscribe(f"{self._command_prefix}#", qos=COMMAND_QOS)
        client.publish(self.status_topic, STATUS_ONLINE, qos=STATUS_QOS, retain=True)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # Reported once per outage; paho keeps retrying with backoff.
        log = logger.debug if self._unreachable_reported else logger.warning
        log(
            "cannot connect to broker %s:%d, retrying (backoff up to %.0f s)",
            self.config.host, self.config.port, self.config.reconnect_max_s,
        )
        self._unreachable_reported = True
        self.last_error = f"broker {self.config.host}:{self.config.port} unreachable"
        self._first_attempt_done.set()

    def _on_log(self, client: mqtt.Client, userdata: object, level: int, message: str) -> None:
        # paho reports expected outage noise as errors; only swallowed callback exceptions matter.
        if message.startswith("Caught exception"):
            logger.error("in paho callback: %s", message)
        else:
            _paho_logger.debug("%s", message)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        reason = str(reason_code)
        if reason_code.is_failure and not flags.is_disconnect_packet_from_server:
            reason = f"connection lost ({reason})"
        if reason_code.is_failure and not self._stopping and self._session is not None:  # not after a refusal
            self.last_error = f"broker {reason[0].lower()}{reason[1:]}"
        self._mark_disconnected(reason)

    def _mark_disconnected(self, reason: str, always_notify: bool = False) -> None:
        with self._lock:
            was_connected = self._session is not None
            self._session = None
        self._connected_event.clear()
        if was_connected:
            log = logger.info if self._stopping else logger.warning
            log("disconnected from broker: %s", reason)
        if was_connected or always_notify:
            self._notify_connection(False, reason)

    def _notify_connection(self, connected: bool, reason: str) -> None:
        for listener in list(self._connection_listeners):
            try:
                listener(connected, reason)
            except Exception:
                logger.exception("connection listener failed")

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        accepted = not reason_code.is_failure
        session = self._session
        for listener in list(self._publish_listeners):
            try:
                listener(session, mid, accepted)
            except Exception:
                logger.exception("publish listener failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("broker refused the command subscription %s#: %s",
                         self._command_prefix, ", ".join(map(str, reason_codes)))
        else:
            logger.debug("subscribed to %s#", self._command_prefix)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            logger.warning("ignoring message with a topic that is not UTF-8")
            return
        command = topic[len(self._command_prefix):] if topic.startswith(self._command_prefix) else ""
        if not command:
            logger.debug("ignoring message on %s", topic)
            return
        if message.retain:
            logger.warning("ignoring retained command on %s: commands must not be retained", topic)
            return
        if self._on_command is None:
            return
        try:
            self._on_command(command, message.payload)
        except Exception:
            logger.exception("command handler failed for %s", topic)

    def _publish_final_status(self, client: mqtt.Client, clean: bool, timeout_s: float) -> None:
        status = STATUS_OFFLINE
        info = client.publish(self.status_topic, status, qos=STATUS_QOS, retain=True)
        if not clean:
            return
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            logger.warning("could not publish %r status: %s", status, exc)
            return
        if not info.is_published():
            logger.warning("broker did not acknowledge %r status within %.1f s", status, timeout_s)


def _check_base_topic(base_topic: str) -> None:
    if not base_topic or base_topic.startswith("/") or base_topic.endswith("/"):
        raise ValueError(f"base topic must be non-empty without leading/trailing '/': {base_topic!r}")
    if any(wildcard in base_topic for wildcard in TOPIC_WILDCARDS):
        raise ValueError(f"base topic must not contain MQTT wildcards: {base_topic!r}")


def refusal_text(reason_code: ReasonCode) -> str:
    """A CONNACK refusal in words: "broker refused: not authorized" (paho names every MQTT 3 and 5 code)."""
    words = str(reason_code)
    return f"broker refused: {words[:1].lower()}{words[1:]}"
