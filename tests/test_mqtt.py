"""Tests for MqttLink and OutboxSender against a real mosquitto broker."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pydantic import ValidationError

from edge.config.broker import MqttConfig
from edge.config.load import parse_config
from edge.publish.mqtt import MqttLink
from edge.publish.sender import OutboxSender
from edge.publish.outbox import Outbox
from tests.support.broker import MosquittoBroker, Received
from tests.support.helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_TOPIC = "lg/dev1"
STATUS_TOPIC = f"{BASE_TOPIC}/status"
RESULT_TOPIC = f"{BASE_TOPIC}/result"
WAIT_S = 15.0
START_RETURNS_WITHIN_S = 2.0  # generous: start() must not wait for the broker at all
COMMAND_WAIT_S = 0.2


def settings_for(broker: MosquittoBroker, **overrides: object) -> MqttConfig:
    values: dict = {
        "host": broker.host,
        "port": broker.port,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    }
    values.update(overrides)
    return MqttConfig(**values)


@pytest.fixture
def make_link() -> Iterator[Callable[..., MqttLink]]:
    """Factory for started MqttLinks that are stopped at the end of the test."""
    links: list[MqttLink] = []

    def factory(config: MqttConfig, base_topic: str = BASE_TOPIC, client_id: str = "lineguard-test",
                **kwargs: object) -> MqttLink:
        link = MqttLink(config, base_topic, client_id=client_id, **kwargs)
        links.append(link)
        link.start()
        return link

    yield factory
    for link in links:
        link.stop(timeout_s=1.0)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite3") as instance:
        yield instance


def put_verdicts(outbox: Outbox, count: int) -> None:
    for _ in range(count):
        seq = outbox.next_seq()
        outbox.put(seq, [(RESULT_TOPIC, b"%d" % seq, 1)])


def seqs_of(messages: list[Received]) -> list[int]:
    return [int(m.payload) for m in messages if m.topic == RESULT_TOPIC]


def has_status(status: bytes) -> Callable[[list[Received]], bool]:
    return lambda messages: any(m.topic == STATUS_TOPIC and m.payload == status for m in messages)


# -- settings -----------------------------------------------------------------


def test_settings_repr_hides_the_password() -> None:
    config = MqttConfig(username="line")
    link = MqttLink(config, BASE_TOPIC, client_id="lineguard-test", password="hunter2-secret")
    assert "hunter2-secret" not in repr(config) + repr(link)
    assert "line" in repr(config)


@pytest.mark.parametrize(
    "kwargs",
    [{"port": 0}, {"max_inflight": 0}, {"reconnect_min_s": 5.0, "reconnect_max_s": 1.0},
     {"tls": {"cert_file": Path("client.crt")}}],
)
def test_settings_reject_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MqttConfig(**kwargs)


@pytest.mark.parametrize("base_topic", ["", "lg/dev1/", "/lg/dev1", "lg/+/x", "lg/#"])
def test_base_topic_must_be_a_plain_topic(base_topic: str) -> None:
    with pytest.raises(ValueError):
        MqttLink(MqttConfig(), base_topic, client_id="lineguard-test")


# -- status -------------------------------------------------------------------


def test_status_is_retained_online_after_connect(broker, make_collector, make_link) -> None:
    live = make_collector(broker, [f"{BASE_TOPIC}/#"])
    changes: list[tuple[bool, str]] = []
    link = make_link(settings_for(broker), on_connection_change=lambda up, why: changes.append((up, why)))
    assert link.wait_connected(WAIT_S)
    assert live.wait_for(has_status(b"online"), WAIT_S)
    assert changes and changes[0][0] is True

    late = make_collector(broker, [STATUS_TOPIC])
    assert late.wait_for(1, WAIT_S)
    assert late.messages[0] == Received(STATUS_TOPIC, b"online", True)

    assert link.publish("stats", b'{"frames": 3}')
    assert live.wait_for(lambda ms: any(m.topic == f"{BASE_TOPIC}/stats" for m in ms), WAIT_S)


def nagle_disabled(link: MqttLink) -> bool:
    sock = link._client.socket()
    return sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_broker_socket_sends_small_packets_at_once_on_every_connection(broker, make_link) -> None:
    """TCP_NODELAY on the live socket: a trigger reply is not held back by Nagle's algorithm, after a
    reconnect either."""
    link = make_link(settings_for(broker, tcp_nodelay=True))
    assert link.wait_connected(WAIT_S)
    assert nagle_disabled(link)
    first_session = link.session
    broker.stop()
    broker.start()
    assert wait_until(lambda: link.connected and link.session != first_session, WAIT_S)
    assert nagle_disabled(link)


def test_nagle_stays_on_where_throughput_matters(broker, make_link) -> None:
    """mqtt.tcp_nodelay: off keeps Nagle's algorithm, and null follows the trigger mode."""
    link = make_link(settings_for(broker, tcp_nodelay=False))
    assert link.wait_connected(WAIT_S)
    assert not nagle_disabled(link)
    resolved = {mode: parse_config(f"model: m\nsource: {{kind: folder, path: .}}\ntrigger: {{mode: {mode}}}\n")
                .mqtt_nodelay for mode in ("continuous", "triggered")}
    assert resolved == {"continuous": False, "triggered": True}


@pytest.mark.parametrize(("clean", "final_status"), [(True, b"offline"), (False, b"offline")])
def test_stop_leaves_a_retained_final_status(broker, make_collector, clean: bool, final_status: bytes) -> None:
    live = make_collector(broker, [STATUS_TOPIC])
    link = MqttLink(settings_for(broker), BASE_TOPIC, client_id="lineguard-test")
    link.start()
    assert live.wait_for(has_status(b"online"), WAIT_S)
    link.stop(clean=clean)
    assert not link.connected
    assert not link.publish("stats", b"{}")  # fire-and-forget is dropped, not queued

    late = make_collector(broker, [STATUS_TOPIC])
    assert late.wait_for(1, WAIT_S)
    assert late.messages[0] == Received(STATUS_TOPIC, final_status, True)


LINK_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from edge.config.broker import MqttConfig
    from edge.publish.mqtt import MqttLink

    link = MqttLink(MqttConfig(host="127.0.0.1", port=int(sys.argv[1])), "lg/dev1", client_id="lineguard-child")
    link.start()
    if not link.wait_connected(15):
        sys.exit("not connected")
    print("connected", flush=True)
    threading.Event().wait()
    """
)


def test_last_will_marks_offline_when_the_process_is_killed(broker, make_collector, tmp_path: Path) -> None:
    live = make_collector(broker, [STATUS_TOPIC])
    script = tmp_path / "link_child.py"
    script.write_text(LINK_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(broker.port)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "connected"
        assert live.wait_for(has_status(b"online"), WAIT_S)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    assert live.wait_for(has_status(b"offline"), WAIT_S)
    late = make_collector(broker, [STATUS_TOPIC])
    assert late.wait_for(1, WAIT_S)
    assert late.messages[0] == Received(STATUS_TOPIC, b"offline", True)


# -- commands -----------------------------------------------------------------


def test_commands_only_from_own_cmd_topic_and_handler_errors_are_contained(
    broker, make_collector, make_link
) -> None:
    received: list[tuple[str, bytes]] = []
    got_command = threading.Condition()

    def on_command(name: str, payload: bytes) -> None:
        with got_command:
            received.append((name, payload))
            got_command.notify_all()
        if name == "explode":
            raise RuntimeError("handler bug")

    def wait_for_command(name: str, timeout_s: float = COMMAND_WAIT_S) -> bool:
        with got_command:
            return got_command.wait_for(lambda: any(n == name for n, _ in received), timeout_s)

    publisher = make_collector(broker, ["unused/#"])
    # A retained command would be replayed on every reconnect: it must be ignored.
    publisher.publish(f"{BASE_TOPIC}/cmd/reboot", b"stale", retain=True)
    link = make_link(settings_for(broker), on_command=on_command)
    assert link.wait_connected(WAIT_S)
    # The command subscription is made on connect; wait until it is active.
    for _ in range(int(WAIT_S / COMMAND_WAIT_S)):
        publisher.publish(f"{BASE_TOPIC}/cmd/sync", b"")
        if wait_for_command("sync"):
            break
    assert all(name == "sync" for name, _ in received)
    received.clear()

    publisher.publish("lg/dev2/cmd/reboot", b"other device")
    publisher.publish(f"{BASE_TOPIC}/cmd", b"no command name")
    publisher.publish(f"{BASE_TOPIC}/cmdx/reboot", b"not under cmd/")
    publisher.publish(f"{BASE_TOPIC}/cmd/explode", b"boom")
    publisher.publish(f"{BASE_TOPIC}/cmd/set/threshold", b"0.7")
    assert wait_for_command("set/threshold", WAIT_S)
    # A probe that was merely slow may still arrive after the clear.
    assert [r for r in received if r[0] != "sync"] == [("explode", b"boom"), ("set/threshold", b"0.7")]
    assert link.connected


# -- authentication -----------------------------------------------------------


def test_refused_connection_is_reported_and_the_password_never_logged(
    make_broker, make_link, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto_passwd = shutil.which("mosquitto_passwd")
    assert mosquitto_passwd, "mosquitto_passwd (from the mosquitto package) is required"
    password_file = tmp_path / "passwords"
    subprocess.run([mosquitto_passwd, "-b", "-c", str(password_file), "line", "right-pass"], check=True)
    secured = make_broker([f"password_file {password_file}"], allow_anonymous=False)
    changes: list[tuple[bool, str]] = []

    with caplog.at_level(logging.DEBUG):
        refused = make_link(
            settings_for(secured, username="line"), password="wrong-pass-123",
            on_connection_change=lambda up, why: changes.append((up, why)),
        )
        deadline = time.monotonic() + WAIT_S
        while not changes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not refused.connected
        assert changes and changes[0][0] is False and "refused" in changes[0][1]

        accepted = make_link(settings_for(secured, username="line"), client_id="ok", password="right-pass")
        assert accepted.wait_connected(WAIT_S)
    assert "wrong-pass-123" not in caplog.text
    assert "right-pass" not in caplog.text


def test_tls_never_falls_back_to_plain_text(broker, make_link, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        MqttConfig(tls={"enabled": True, "ca_file": tmp_path / "missing-ca.pem"})
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate\n")
    with pytest.raises(OSError):
        MqttLink(MqttConfig(tls={"enabled": True, "ca_file": not_a_certificate}), BASE_TOPIC,
                 client_id="lineguard-test").start()
    # The broker only speaks plain MQTT: a TLS link must keep failing, not downgrade. Wait for proof that
    # attempts were made and failed (the link's report and the broker's log of the handshakes it rejected)
    # rather than for a time that a slow first attempt could outlast.
    with caplog.at_level(logging.WARNING, logger="edge.publish.mqtt"):
        link = make_link(settings_for(broker, tls={"enabled": True},
                                      reconnect_min_s=0.1, reconnect_max_s=0.2))
        assert not link.wait_first_attempt(WAIT_S)
        assert any("cannot connect to broker" in record.getMessage() for record in caplog.records)
    rejected = lambda: broker.log_text().count("New connection from")  # noqa: E731
    assert wait_until(lambda: rejected() >= 2, WAIT_S), broker.log_text()
    assert not link.connected and "New client connected" not in broker.log_text()


# -- outbox sender ------------------------------------------------------------


def test_sender_delivers_in_order_and_empties_the_outbox(broker, make_collector, make_link, outbox) -> None:
    count = 1000
    dashboard = make_collector(broker, [RESULT_TOPIC])
    put_verdicts(outbox, count)
    link = make_link(settings_for(broker))
    sender = OutboxSender(link, outbox)
    sender.start()
    try:
        assert sender.wait_drained(WAIT_S)
        assert dashboard.wait_for(count, WAIT_S)
        assert seqs_of(dashboard.messages) == list(range(1, count + 1))
        assert sender.delivered == count

        put_verdicts(outbox, 5)  # live traffic: wake() makes delivery immediate
        sender.wake()
        assert sender.wait_drained(WAIT_S)
        assert dashboard.wait_for(count + 5, WAIT_S)
        assert seqs_of(dashboard.messages) == list(range(1, count + 6))
        assert outbox.depth() == 0
    finally:
        sender.stop()


def test_sender_loses_nothing_when_the_broker_restarts_mid_stream(
    make_broker, make_collector, make_link, outbox
) -> None:
    before_outage, during_outage = 3000, 300
    # Persistent broker and dashboard session: what the broker accepted while the
    # dashboard was reconnecting is queued for it rather than discarded.
    persistent = make_broker(["max_queued_messages 0"], persistence=True)
    dashboard = make_collector(persistent, [RESULT_TOPIC], client_id="dashboard", clean_session=False)
    put_verdicts(outbox, before_outage)
    link = make_link(settings_for(persistent))
    sender = OutboxSender(link, outbox, window=64)
    sender.start()
    try:
        assert dashboard.wait_for(50, WAIT_S)
        persistent.stop()
        assert outbox.depth() > 0, "outage came too late to test anything"
        put_verdicts(outbox, during_outage)
        sender.wake()
        persistent.start()

        total = before_outage + during_outage
        assert sender.wait_drained(WAIT_S)
        assert dashboard.wait_for(lambda ms: len(set(seqs_of(ms))) == total, WAIT_S)
        first_seen = list(dict.fromkeys(seqs_of(dashboard.messages)))
        assert first_seen == list(range(1, total + 1))
        assert outbox.depth() == 0
    finally:
        sender.stop()


def test_start_returns_at_once_with_the_broker_down_and_connects_later(
    make_broker, make_collector, make_link, outbox
) -> None:
    later = make_broker(start=False)
    put_verdicts(outbox, 20)  # e.g. left over from before a restart

    started_at = time.monotonic()
    link = make_link(settings_for(later))
    assert time.monotonic() - started_at < START_RETURNS_WITHIN_S
    sender = OutboxSender(link, outbox)
    sender.start()
    try:
        assert not link.wait_first_attempt(WAIT_S)  # the attempt was made, and failed
        assert outbox.depth() == 20

        later.start()
        assert link.wait_connected(WAIT_S)
        assert sender.wait_drained(WAIT_S)
        assert sender.delivered == 20
        status = make_collector(later, [STATUS_TOPIC])
        assert status.wait_for(has_status(b"online"), WAIT_S)
    finally:
        sender.stop()
