"""The paho client behind edge.publish.mqtt's MqttLink, set up before it connects.

Credentials, TLS, reconnect backoff, in-flight window, last will and the socket options: everything
MqttLink needs from paho apart from its callbacks.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from edge.config.broker import MqttConfig

logger = logging.getLogger(__name__)


def build_client(config: MqttConfig, client_id: str, password: str | None,
                 will: tuple[str, str, int]) -> mqtt.Client:
    """A paho client for ``config`` that has not connected yet; ``will`` is (topic, payload, qos), retained.

    Raises OSError or ValueError when a TLS file cannot be loaded.
    """
    # MQTT 5 has no clean_session flag: connect_async's clean_start and a session expiry of 0 do the same.
    version5 = config.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=None if version5 else True,
                         protocol=mqtt.MQTTv5 if version5 else mqtt.MQTTv311)
    # A bug in a callback must be logged (MqttLink's on_log), never end the network thread.
    client.suppress_exceptions = True
    if config.username is not None:
        client.username_pw_set(config.username, password)
    _set_tls(client, config)
    client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
    client.max_inflight_messages_set(config.max_inflight)
    will_topic, will_payload, will_qos = will
    client.will_set(will_topic, will_payload, qos=will_qos, retain=True)
    if config.tcp_nodelay:  # null (a link built without a whole config) counts as off, Nagle's default
        client.on_socket_open = disable_nagle
    return client


def disable_nagle(client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
    """paho's on_socket_open, called on every new connection before CONNECT is sent.

    A trigger reply or a result is one small packet: with Nagle's algorithm the kernel holds it until the
    broker acknowledges the packet before it (measured: about 10 ms per trigger answer). Each publish is then
    a segment of its own, which costs throughput (mqtt.tcp_nodelay).
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # not a TCP socket: nothing to tune
        logger.debug("cannot set TCP_NODELAY on the broker socket: %s", exc)


def _set_tls(client: mqtt.Client, config: MqttConfig) -> None:
    tls = config.tls
    if tls.enabled:
        client.tls_set(
            ca_certs=_path_or_none(tls.ca_file),
            certfile=_path_or_none(tls.cert_file),
            keyfile=_path_or_none(tls.key_file),
        )
    elif tls.ca_file or tls.cert_file:
        logger.warning("TLS files are configured but mqtt.tls.enabled is false: connecting without TLS")


def _path_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)
