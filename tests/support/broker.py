"""A real Mosquitto broker on a free local port and an MQTT message collector, for tests and benchmarks.

The ``mosquitto`` binary is required: a missing binary is an error, not a
skip, because CI installs it. Set ``MOSQUITTO_BIN`` to use another binary.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

LOCALHOST = "127.0.0.1"
BROKER_START_TIMEOUT_S = 10.0
BROKER_STOP_TIMEOUT_S = 5.0
PORT_POLL_INTERVAL_S = 0.02
COLLECTOR_SUBSCRIBE_TIMEOUT_S = 5.0
COLLECTOR_RECONNECT_MIN_S = 0.05
COLLECTOR_RECONNECT_MAX_S = 0.5
DEFAULT_WAIT_S = 10.0
# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
MOSQUITTO_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_mosquitto() -> str:
    """Path of the mosquitto binary; raises if it is not installed."""
    candidates = [os.environ.get("MOSQUITTO_BIN"), shutil.which("mosquitto"), *MOSQUITTO_FALLBACK_PATHS]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "mosquitto binary not found (looked on PATH and in /usr/sbin): install the "
        "'mosquitto' package or set MOSQUITTO_BIN; the MQTT tests need a real broker"
    )


def port_accepts_connections(host: str, port: int) -> bool:
    """True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """A mosquitto process on a fixed local port, with a config file in ``workdir``.

    The generated config always has ``listener PORT HOST``, ``allow_anonymous``
    and ``persistence``; ``config_lines`` are appended after the listener line,
    so listener options (``certfile``, ``require_certificate``...) apply to it,
    and more ``listener`` blocks can be added. With ``persistence=True`` the
    database lives in ``workdir`` and survives :meth:`stop`/:meth:`start`.
    The broker's own log is in ``workdir / "mosquitto.log"``.
    """

    def __init__(
        self,
        workdir: Path,
        config_lines: Iterable[str] = (),
        *,
        host: str = LOCALHOST,
        port: int | None = None,
        allow_anonymous: bool = True,
        persistence: bool = False,
    ) -> None:
        self.binary = find_mosquitto()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.config_path.write_text(
            self._render_config(list(config_lines), allow_anonymous, persistence), encoding="utf-8"
        )

    def _render_config(self, config_lines: list[str], allow_anonymous: bool, persistence: bool) -> str:
        lines = [
            # Run as whoever runs the tests: as root, mosquitto would otherwise switch
            # to the 'mosquitto' user and lose access to files in the test's tmp dir.
            f"user {getpass.getuser()}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            f"persistence {'true' if persistence else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %H:%M:%S",
        ]
        if persistence:
            lines.append(f"persistence_location {self.workdir}/")
        lines.append(f"listener {self.port} {self.host}")
        lines.extend(config_lines)
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = BROKER_START_TIMEOUT_S) -> MosquittoBroker:
        """Start (or restart) mosquitto on the same port; return once it accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto already running on port {self.port}")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not port_accepts_connections(self.host, self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on port {self.port} in {timeout_s} s:\n{self.log_text()}")
            time.sleep(PORT_POLL_INTERVAL_S)
        return self

    def stop(self, timeout_s: float = BROKER_STOP_TIMEOUT_S) -> None:
        """Graceful stop: SIGTERM and wait (SIGKILL if it does not exit in time)."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Abrupt stop: SIGKILL and wait."""
        self._end(signal.SIGKILL, BROKER_STOP_TIMEOUT_S)

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def log_text(self) -> str:
        """The broker's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.host}:{self.port}, running={self.running})"


class NotStrictJSON(ValueError):
    """A payload that JavaScript's JSON.parse (and so Node-RED or a browser dashboard) would refuse."""


def _refuse_constant(name: str):
    raise NotStrictJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStrictJSON(f"{text} overflows to {value}")
    return value


def strict_json(data: bytes | str):
    """Parse JSON as strict readers do: NaN, Infinity and numbers beyond a double's range are refused
    (Python's json.loads takes all three)."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)


class Received(NamedTuple):
    """One message seen by a MessageCollector."""

    topic: str
    payload: bytes
    retain: bool


class MessageCollector:
    """A paho subscriber that records every message it receives.

    Subscribes to ``topics`` at ``qos`` and returns only once the broker has
    acknowledged the subscription, so nothing published afterwards is missed.
    It reconnects (and resubscribes) by itself if the broker restarts; pass
    ``client_id`` and ``clean_session=False`` together with a persistent broker
    to also receive what was published while it was disconnected.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Iterable[str],
        *,
        qos: int = 1,
        client_id: str = "",
        clean_session: bool = True,
    ) -> None:
        self.topics = list(topics)
        self.qos = qos
        self._messages: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session, protocol=mqtt.MQTTv311
        )
        self._client.reconnect_delay_set(COLLECTOR_RECONNECT_MIN_S, COLLECTOR_RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(COLLECTOR_SUBSCRIBE_TIMEOUT_S):
            self.close()
            raise TimeoutError(f"collector could not subscribe to {self.topics} on {host}:{port}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self._messages.append(Received(message.topic, message.payload, bool(message.retain)))
            self._changed.notify_all()

    @property
    def messages(self) -> list[Received]:
        """A snapshot of everything received so far, in arrival order."""
        with self._changed:
            return list(self._messages)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        """Payloads received so far, optionally only those on ``topic``."""
        return [m.payload for m in self.messages if topic is None or m.topic == topic]

    def json_payloads(self, topic: str) -> list:
        """The payloads received on ``topic`` so far, each parsed as strict JSON (see strict_json)."""
        return [strict_json(payload) for payload in self.payloads(topic)]

    def wait_for(
        self, condition: int | Callable[[list[Received]], bool], timeout_s: float = DEFAULT_WAIT_S
    ) -> bool:
        """Wait until ``condition`` holds; return False on timeout.

        ``condition`` is a message count (at least that many received) or a
        predicate called with the list of messages received so far.
        """
        if isinstance(condition, int):
            count = condition

            def condition(messages: list[Received]) -> bool:
                return len(messages) >= count

        with self._changed:
            return self._changed.wait_for(lambda: condition(self._messages), timeout_s)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._changed:
            self._messages.clear()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Publish through the collector's connection and wait until it is sent."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(DEFAULT_WAIT_S)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
