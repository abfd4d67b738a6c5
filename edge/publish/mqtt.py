"""The daemon's MQTT link (paho-mqtt 2.x) and the sender that drains the outbox.

:class:`MqttLink` owns the only broker connection: it keeps the retained
``<base>/status`` topic truthful (``online`` / ``stopped``, ``offline`` as the
last will), receives commands under ``<base>/cmd/`` and reconnects with
backoff on its own. :class:`OutboxSender` publishes the durable outbox through
it at QoS 1 and deletes each row only once the broker has acknowledged it.
"""
from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.publish.outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger(f"{__name__}.paho")

STATUS_SUBTOPIC = "status"
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_STOPPED = "stopped"
STATUS_QOS = 1
COMMAND_SUBTOPIC = "cmd"
COMMAND_QOS = 1
TOPIC_WILDCARDS = ("+", "#")

SENDER_THREAD_NAME = "outbox-sender"
SENDER_IDLE_RECHECK_S = 5.0
SENDER_ERROR_BACKOFF_MIN_S = 1.0
SENDER_ERROR_BACKOFF_MAX_S = 30.0
SENDER_JOIN_TIMEOUT_S = 5.0

ConnectionListener = Callable[[bool, str], None]
# (session, mid, accepted): session is the MqttLink.session the ack arrived in.
PublishListener = Callable[[int | None, int, bool], None]


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach and authenticate with the MQTT broker. The password never appears in repr."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "lineguard"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    max_inflight: int = 256
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    tls_enabled: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"broker port must be 1-65535, got {self.port}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {self.max_inflight}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError(
                f"need 0 < reconnect_min_s <= reconnect_max_s, got {self.reconnect_min_s}, {self.reconnect_max_s}"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")


class MqttLink:
    """The daemon's only connection to the broker.

    ``base_topic`` is ``"<topic_prefix>/<device_id>"``. Commands published on
    ``<base_topic>/cmd/<name>`` reach ``on_command(name, payload)`` on the
    network thread, so the handler must be quick; it must not raise, but if it
    does the error is logged and the link keeps running. Retained commands are
    ignored so a stale command is never replayed on reconnect.
    ``on_connection_change(connected, reason)`` reports every connect, disconnect
    and refused connection attempt.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        base_topic: str,
        on_command: Callable[[str, bytes], None] | None = None,
        on_connection_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        _check_base_topic(base_topic)
        self.settings = settings
        self.base_topic = base_topic
        self.status_topic = f"{base_topic}/{STATUS_SUBTOPIC}"
        self._command_prefix = f"{base_topic}/{COMMAND_SUBTOPIC}/"
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

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; returns at once, even if the broker is down."""
        if self._client is not None:
            raise RuntimeError("MqttLink already started")
        client = self._make_client()
        self._stopping = False
        settings = self.settings
        logger.info(
            "connecting to broker %s:%d as %r (tls %s, %s)",
            settings.host, settings.port, settings.client_id,
            "on" if settings.tls_enabled else "off",
            f"user {settings.username!r}" if settings.username else "no user name",
        )
        # Set before the network thread starts: on_connect may fire at once and
        # publish_in_session needs the client.
        self._client = client
        try:
            client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
            client.loop_start()
        except Exception:
            self._client = None
            raise

    def check_files(self) -> None:
        """Load the TLS files as start() would, without connecting; raises OSError or ValueError."""
        self._make_client()

    def stop(self, clean: bool = True, timeout_s: float = 5.0) -> None:
        """Disconnect and stop the network thread.

        ``clean=True`` first publishes a retained ``stopped`` status and waits up
        to ``timeout_s`` for the broker to acknowledge it. ``clean=False`` (a
        stop caused by a fault) marks the device ``offline``, as the last will
        would, without waiting.
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

    def publish(self, subtopic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        """Fire-and-forget publish on ``<base_topic>/<subtopic>``.

        For status, stats, heatmaps and command replies. Dropped (returns False)
        while disconnected; anything that must not be lost goes through the outbox.
        """
        topic = f"{self.base_topic}/{subtopic}"
        client = self._client
        if client is None or not self.connected:
            logger.debug("not connected, dropping message on %s", topic)
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
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
        settings = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        # A bug in a callback must be logged (see _on_log), never end the network thread.
        client.suppress_exceptions = True
        client.on_log = self._on_log
        client.on_connect_fail = self._on_connect_fail
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls_enabled:
            client.tls_set(
                ca_certs=_path_or_none(settings.tls_ca_file),
                certfile=_path_or_none(settings.tls_cert_file),
                keyfile=_path_or_none(settings.tls_key_file),
            )
        elif settings.tls_ca_file or settings.tls_cert_file:
            logger.warning("TLS files are configured but tls_enabled is false: connecting without TLS")
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        client.max_inflight_messages_set(settings.max_inflight)
        client.will_set(self.status_topic, STATUS_OFFLINE, qos=STATUS_QOS, retain=True)
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
                self.settings.host, self.settings.port, reason_code,
            )
            self._mark_disconnected(f"refused: {reason_code}", always_notify=True)
            self._first_attempt_done.set()
            return
        # Whatever paho still holds from the previous connection is re-sent by
        # OutboxSender from the outbox, in order; a replay by paho as well would
        # interleave two streams.
        client.drop_out_messages()
        # Subscribe first: the broker handles a client's packets in order, so a
        # dashboard that sees "online" can send a command and it is not missed.
        client.subscribe(f"{self.base_topic}/{COMMAND_SUBTOPIC}/#", qos=COMMAND_QOS)
        client.publish(self.status_topic, STATUS_ONLINE, qos=STATUS_QOS, retain=True)
        with self._lock:
            self._sessions_started += 1
            self._session = self._sessions_started
        self._unreachable_reported = False
        self._connected_event.set()
        self._first_attempt_done.set()
        logger.info("connected to broker %s:%d", self.settings.host, self.settings.port)
        self._notify_connection(True, str(reason_code))

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # Reported once per outage; paho keeps retrying with backoff.
        log = logger.debug if self._unreachable_reported else logger.warning
        log(
            "cannot connect to broker %s:%d, retrying (backoff up to %.0f s)",
            self.settings.host, self.settings.port, self.settings.reconnect_max_s,
        )
        self._unreachable_reported = True
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

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        accepted = not reason_code.is_failure
        session = self._session
        for listener in list(self._publish_listeners):
            try:
                listener(session, mid, accepted)
            except Exception:
                logger.exception("publish listener failed")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("broker refused the command subscription %s/%s/#: %s",
                         self.base_topic, COMMAND_SUBTOPIC, ", ".join(map(str, reason_codes)))
        else:
            logger.debug("subscribed to %s/%s/#", self.base_topic, COMMAND_SUBTOPIC)

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
        status = STATUS_STOPPED if clean else STATUS_OFFLINE
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


class OutboxSender:
    """Thread that drains the Outbox through the MqttLink: publish QoS 1 in order, delete each row on PUBACK.

    While connected it publishes rows after an in-memory cursor, keeping at
    most ``window`` in flight, and deletes rows in batches as their PUBACKs
    arrive. On every new connection it starts over from the oldest row still
    stored, so unacknowledged messages are re-sent in order: a receiver may see
    a duplicate, but never a gap or a reordering.
    """

    def __init__(self, link: MqttLink, outbox: Outbox, window: int = 256,
                 on_delivered: Callable[[list[int]], None] | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._link = link
        self._outbox = outbox
        self._window = window
        self._wakeup = threading.Event()
        self._stop_requested = threading.Event()
        # Filled by the network thread, drained by the sender thread (deque ops are atomic).
        self._acks: collections.deque[tuple[int | None, int, bool]] = collections.deque()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._session: int | None = None
        self._cursor = 0
        self._in_flight: dict[int, tuple[int, int]] = {}  # paho mid -> outbox row id, verdict seq
        self._acked_unsaved: list[int] = []
        self._acked_seqs: list[int] = []
        self._on_delivered = on_delivered
        self._delivered = 0
        self.discarded = 0  # rows that could never be published (invalid topic/qos/size)

    @property
    def delivered(self) -> int:
        """Messages acknowledged by the broker (PUBACK) and removed from the outbox so far."""
        return self._delivered

    def start(self) -> None:
        """Start the sender thread."""
        if self._thread is not None:
            raise RuntimeError("OutboxSender already started")
        self._stop_requested.clear()
        self._session = None
        self._cursor = 0
        self._in_flight.clear()
        self._acks.clear()
        self._link.add_publish_listener(self._on_ack)
        self._link.add_connection_listener(self._on_connection_change)
        self._thread = threading.Thread(target=self._run, name=SENDER_THREAD_NAME, daemon=True)
        self._thread.start()
        self.wake()

    def stop(self) -> None:
        """Stop the thread; unacknowledged rows stay in the outbox for the next start."""
        thread = self._thread
        if thread is None:
            return
        self._stop_requested.set()
        self._wakeup.set()
        thread.join(SENDER_JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.warning("outbox sender did not stop within %.1f s", SENDER_JOIN_TIMEOUT_S)
        self._link.remove_publish_listener(self._on_ack)
        self._link.remove_connection_listener(self._on_connection_change)
        self._thread = None

    def wake(self) -> None:
        """Tell the sender new rows were put, so they go out without waiting."""
        self._wakeup.set()

    def wait_drained(self, timeout_s: float) -> bool:
        """Block until the outbox is empty or ``timeout_s`` elapsed; return whether it is empty."""
        with self._progress:
            return self._progress.wait_for(lambda: self._outbox.depth() == 0, timeout_s)

    # -- callbacks from the network thread ------------------------------------

    def _on_ack(self, session: int | None, mid: int, accepted: bool) -> None:
        self._acks.append((session, mid, accepted))
        self._wakeup.set()

    def _on_connection_change(self, connected: bool, reason: str) -> None:
        self._wakeup.set()

    # -- sender thread --------------------------------------------------------

    def _run(self) -> None:
        logger.info("outbox sender started, %d messages pending", self._outbox.depth())
        backoff_s = SENDER_ERROR_BACKOFF_MIN_S
        while not self._stop_requested.is_set():
            self._wakeup.wait(SENDER_IDLE_RECHECK_S)
            self._wakeup.clear()
            if self._stop_requested.is_set():
                break
            try:
                self._step()
            except Exception as exc:
                if isinstance(exc, OutboxError):
                    logger.error("outbox sender: %s; retrying in %.0f s", exc, backoff_s)
                else:
                    logger.exception("outbox sender failed; retrying in %.0f s", backoff_s)
                self._stop_requested.wait(backoff_s)
                backoff_s = min(backoff_s * 2, SENDER_ERROR_BACKOFF_MAX_S)
                self._wakeup.set()
            else:
                backoff_s = SENDER_ERROR_BACKOFF_MIN_S
        logger.info("outbox sender stopped, %d messages pending", self._outbox.depth())

    def _step(self) -> None:
        self._settle_acks()
        session = self._link.session
        if session != self._session:
            self._restart_from_oldest(session)
        if session is not None:
            self._fill_window(session)

    def _settle_acks(self) -> None:
        while self._acks:
            session, mid, accepted = self._acks.popleft()
            row = self._in_flight.pop(mid, None) if session == self._session else None
            if row is None:
                continue  # the link's own messages, or an earlier connection's
            row_id, seq = row
            if accepted:
                self._acked_unsaved.append(row_id)
                self._acked_seqs.append(seq)
            else:
                logger.warning("broker refused outbox message %d; it is re-sent after reconnecting", row_id)
        if self._acked_unsaved:
            # Under the lock, so a waiter never sees an empty outbox with an old count.
            with self._progress:
                removed = self._outbox.ack(self._acked_unsaved)
                self._acked_unsaved = []
                self._delivered += removed
                self._progress.notify_all()
            seqs, self._acked_seqs = sorted(set(self._acked_seqs)), []
            if self._on_delivered is not None:
                self._on_delivered(seqs)

    def _restart_from_oldest(self, session: int | None) -> None:
        if self._in_flight:
            logger.info("connection changed: %d outbox messages unacknowledged, re-sending", len(self._in_flight))
        self._session = session
        self._cursor = 0
        self._in_flight.clear()

    def _fill_window(self, session: int) -> None:
        free = self._window - len(self._in_flight)
        if free <= 0:
            return
        for row in self._outbox.pending(after_id=self._cursor, limit=free):
            try:
                mid = self._link.publish_in_session(session, row.topic, row.payload, row.qos)
            except ValueError as exc:
                self._discard(row.id, row.seq, exc)
                self._cursor = row.id
                continue
            if mid is None:
                return  # connection lost: the next session starts from the oldest row
            self._in_flight[mid] = (row.id, row.seq)
            self._cursor = row.id

    def _discard(self, row_id: int, seq: int, error: ValueError) -> None:
        logger.error("outbox message %d (seq %d) can never be published (%s); discarding it", row_id, seq, error)
        with self._progress:
            self._outbox.ack([row_id])
            self.discarded += 1
            self._progress.notify_all()


def _check_base_topic(base_topic: str) -> None:
    if not base_topic or base_topic.startswith("/") or base_topic.endswith("/"):
        raise ValueError(f"base topic must be non-empty without leading/trailing '/': {base_topic!r}")
    if any(wildcard in base_topic for wildcard in TOPIC_WILDCARDS):
        raise ValueError(f"base topic must not contain MQTT wildcards: {base_topic!r}")


def _path_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)
