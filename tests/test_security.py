"""Security of the daemon's broker link: real mosquitto, real `lineguard run` processes, loopback only.

TLS with a CA file (and optional client certificate), passwords from the
environment, a file or a systemd credential, no plain-text fallback, no
password in any log or payload, commands only from the device's own cmd/
topic, and the example ACL and broker config in examples/mosquitto/.
Certificates are made in the test with the openssl command.
"""
from __future__ import annotations

import getpass
import json
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.publish.outbox import Outbox
from tests.support.broker import MessageCollector, free_port, port_accepts_connections, strict_json
from tests.support.daemon_harness import BASE, DEVICE, PREFIX, DaemonProcess, sample_folder, write_config
from tests.support.helpers import ROOT, run_cli

EXAMPLES = ROOT / "examples" / "mosquitto"
LOCALHOST = "127.0.0.1"
SECRET = "S3cret-Pa55-xyz"
FRAMES = 3
# A daemon that must stay unconnected replays its frames, then waits this long before exiting.
REFUSED_DRAIN = ("--drain-timeout", "5")  # room for a second attempt on a loaded machine
# Never inherit a password from the environment the tests run in.
NO_CREDENTIALS = {"LINEGUARD_MQTT_PASSWORD": "", "CREDENTIALS_DIRECTORY": ""}


# -- certificates -------------------------------------------------------------


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def issue(folder: Path, name: str, ca: tuple[Path, Path], usage: str,
          alt_names: str | None = None) -> tuple[Path, Path]:
    """A leaf certificate (and its key) for ``name`` signed by ``ca``."""
    cert, key, csr, ext = (folder / f"{name}.{suffix}" for suffix in ("crt", "key", "csr", "ext"))
    extensions = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
                  f"extendedKeyUsage={usage}", "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    if alt_names:
        extensions.append(f"subjectAltName={alt_names}")
    ext.write_text("\n".join(extensions) + "\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", random.getrandbits(63),
            "-days", "2", "-extfile", ext, "-out", cert)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA with a broker certificate for 127.0.0.1/localhost and a client certificate, plus decoys."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "plant-ca")
    other_ca = make_ca(folder, "other-ca")
    broker = issue(folder, "broker", ca, "serverAuth", "IP:127.0.0.1,DNS:localhost")
    elsewhere = issue(folder, "elsewhere", ca, "serverAuth", "DNS:broker.elsewhere.example")
    client = issue(folder, "cell-7", ca, "clientAuth")
    return {"ca": ca[0], "other_ca": other_ca[0], "broker_cert": broker[0], "broker_key": broker[1],
            "elsewhere_cert": elsewhere[0], "elsewhere_key": elsewhere[1],
            "client_cert": client[0], "client_key": client[1]}


def tls_listener(port: int | None, ca: Path, cert: Path, key: Path, *extra: str) -> list[str]:
    """Mosquitto lines for a TLS listener (``port=None``: options for the listener above)."""
    head = [] if port is None else [f"listener {port} {LOCALHOST}"]
    return [*head, f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", *extra]


def await_listeners(*ports: int) -> None:
    """make_broker waits for the first listener only; mosquitto opens the others a moment later."""
    deadline = time.monotonic() + 5
    for port in ports:
        while not port_accepts_connections(LOCALHOST, port):
            assert time.monotonic() < deadline, f"mosquitto does not listen on {port}"
            time.sleep(0.02)


def password_file(folder: Path, users: dict[str, str]) -> Path:
    path = folder / "passwd"
    for number, (user, password) in enumerate(users.items()):
        create = ["-c"] if number == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(path), user, password], check=True)
    return path


# -- clients ------------------------------------------------------------------


class SecureCollector(MessageCollector):
    """A MessageCollector that logs in with a user name and password and, with ``ca_file``, speaks TLS."""

    def __init__(self, host: str, port: int, topics: list[str], *, username: str | None = None,
                 password: str | None = None, ca_file: Path | None = None, **kwargs: object) -> None:
        self._login = (username, password)
        self._ca_file = ca_file
        super().__init__(host, port, topics, **kwargs)

    # MessageCollector connects inside __init__: set up the client as it is assigned, before connect().
    @property
    def _client(self) -> mqtt.Client:
        return self.__dict__["_paho"]

    @_client.setter
    def _client(self, client: mqtt.Client) -> None:
        if self._login[0] is not None:
            client.username_pw_set(*self._login)
        if self._ca_file is not None:
            client.tls_set(ca_certs=str(self._ca_file))
        self.__dict__["_paho"] = client


@pytest.fixture
def make_secure_collector() -> Iterator[Callable[..., SecureCollector]]:
    collectors: list[SecureCollector] = []

    def factory(port: int, topics: list[str], **kwargs: object) -> SecureCollector:
        collectors.append(SecureCollector(LOCALHOST, port, topics, **kwargs))
        return collectors[-1]

    yield factory
    for collector in collectors:
        collector.close()


class RawRecorder:
    """A TCP listener that never answers and keeps the bytes each connection sent."""

    def __init__(self) -> None:
        self._server = socket.create_server((LOCALHOST, 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self.connections: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                self.connections.append(self._read(conn))

    def _read(self, conn: socket.socket) -> bytes:
        conn.settimeout(0.5)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


# -- daemons ------------------------------------------------------------------


def start_daemon(tmp_path: Path, device: str, port: int, *args: str, env: dict | None = None,
                 frames: int = FRAMES, **sections: object) -> DaemonProcess:
    """`lineguard run` as ``device`` in its own folder, so several can run side by side."""
    folder = tmp_path / device
    folder.mkdir()
    config = write_config(folder, port, sample_folder(folder, frames), device_id=device, **sections)
    return DaemonProcess(config, {**NO_CREDENTIALS, **(env or {})}, *args)


def tls_settings(ca: Path, **extra: object) -> dict:
    return {"tls": {"enabled": True, "ca_file": str(ca), **extra}}


def results_of(collector: MessageCollector, device: str) -> list[dict]:
    return [strict_json(p) for p in collector.payloads(f"{PREFIX}/{device}/result")]


def assert_delivered(daemon: DaemonProcess, collector: MessageCollector, device: str, frames: int = FRAMES) -> None:
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    assert "connected to broker" in daemon.log()
    assert collector.wait_for(lambda _: len(results_of(collector, device)) >= frames, 10), daemon.log()[-3000:]


def assert_never_connected(daemon: DaemonProcess, frames: int = FRAMES) -> None:
    """It inspected every frame, kept the verdicts in its outbox, never connected, and exited cleanly."""
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    log = daemon.log()
    assert "connected to broker" not in log, log[-3000:]
    assert sum(" PASS " in line or " FAIL " in line for line in log.splitlines()) == frames
    with Outbox(daemon.log_path.parent / "state" / "outbox.sqlite3") as outbox:
        assert outbox.depth() >= frames


def broker_clients(log: str) -> list[str]:
    """The "New client connected ... as ID (...)" lines of a mosquitto log."""
    return [line for line in log.splitlines() if "New client connected" in line]


# -- 1. TLS ---------------------------------------------------------------------


@pytest.mark.slow
def test_tls_with_a_ca_file_delivers_and_rejects_an_untrusted_or_misnamed_broker(tmp_path, pki, make_broker):
    misnamed_port, plain_port = free_port(), free_port()
    broker = make_broker([
        *tls_listener(None, pki["ca"], pki["broker_cert"], pki["broker_key"]),
        *tls_listener(misnamed_port, pki["ca"], pki["elsewhere_cert"], pki["elsewhere_key"]),
        f"listener {plain_port} {LOCALHOST}",
    ])
    await_listeners(misnamed_port, plain_port)
    collector = MessageCollector(LOCALHOST, plain_port, [f"{PREFIX}/#"])
    try:
        trusted = start_daemon(tmp_path, "tls-ok", broker.port, mqtt=tls_settings(pki["ca"]))
        untrusted = start_daemon(tmp_path, "tls-other-ca", broker.port, *REFUSED_DRAIN,
                                 mqtt=tls_settings(pki["other_ca"]))
        misnamed = start_daemon(tmp_path, "tls-misnamed", misnamed_port, *REFUSED_DRAIN,
                                mqtt=tls_settings(pki["ca"]))
        assert_delivered(trusted, collector, "tls-ok")
        assert_never_connected(untrusted)
        assert_never_connected(misnamed)
        assert not results_of(collector, "tls-other-ca") and not results_of(collector, "tls-misnamed")
    finally:
        collector.close()
    clients = "\n".join(broker_clients(broker.log_text()))
    assert "lineguard-tls-ok" in clients and "lineguard-tls-other-ca" not in clients
    assert "lineguard-tls-misnamed" not in clients


def test_a_tls_link_sends_without_nagle_delay_too(pki, make_broker):
    """TCP_NODELAY is set on the socket under TLS as well (paho wraps the TCP socket it opened)."""
    from edge.config.broker import MqttConfig
    from edge.publish.mqtt import MqttLink
    from tests.test_mqtt import nagle_disabled

    broker = make_broker(tls_listener(None, pki["ca"], pki["broker_cert"], pki["broker_key"]))
    link = MqttLink(MqttConfig(host=LOCALHOST, port=broker.port, tcp_nodelay=True, **tls_settings(pki["ca"])),
                    "lg/tls", client_id="lineguard-tls-nodelay")
    link.start()
    try:
        assert link.wait_connected(15), broker.log_text()
        assert nagle_disabled(link)
    finally:
        link.stop()


@pytest.mark.slow
def test_a_broker_that_requires_a_client_certificate(tmp_path, pki, make_broker):
    plain_port = free_port()
    broker = make_broker([
        *tls_listener(None, pki["ca"], pki["broker_cert"], pki["broker_key"], "require_certificate true"),
        f"listener {plain_port} {LOCALHOST}",
    ])
    await_listeners(plain_port)
    collector = MessageCollector(LOCALHOST, plain_port, [f"{PREFIX}/#"])
    try:
        client_tls = tls_settings(pki["ca"], cert_file=str(pki["client_cert"]), key_file=str(pki["client_key"]))
        with_cert = start_daemon(tmp_path, "mtls-cert", broker.port, mqtt=client_tls)
        without = start_daemon(tmp_path, "mtls-none", broker.port, *REFUSED_DRAIN, mqtt=tls_settings(pki["ca"]))
        assert_delivered(with_cert, collector, "mtls-cert")
        assert_never_connected(without)
        assert not results_of(collector, "mtls-none")
    finally:
        collector.close()
    assert "lineguard-mtls-none" not in "\n".join(broker_clients(broker.log_text()))


# -- 2. user name and password ------------------------------------------------


@pytest.mark.slow
def test_password_from_env_file_or_credential_and_a_wrong_one_never_connects(
    tmp_path, make_broker, make_secure_collector
):
    passwd = password_file(tmp_path, {"line": "right-Pa55", "dashboard": "dash-Pa55"})
    broker = make_broker([f"password_file {passwd}"], allow_anonymous=False)
    dashboard = make_secure_collector(broker.port, [f"{PREFIX}/#"], username="dashboard", password="dash-Pa55")
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text("right-Pa55\n")  # the newline an editor adds is not part of the password
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt_password").write_text("right-Pa55")
    login = {"username": "line"}
    from_env = start_daemon(tmp_path, "pw-env", broker.port, mqtt=login,
                            env={"LINEGUARD_MQTT_PASSWORD": "right-Pa55"})
    from_file = start_daemon(tmp_path, "pw-file", broker.port, mqtt={**login, "password_file": str(secret_file)})
    from_credential = start_daemon(tmp_path, "pw-cred", broker.port, mqtt=login,
                                   env={"CREDENTIALS_DIRECTORY": str(credentials)})
    wrong = start_daemon(tmp_path, "pw-wrong", broker.port, *REFUSED_DRAIN, mqtt=login,
                         env={"LINEGUARD_MQTT_PASSWORD": "wrong-Pa55"})
    for daemon, device in ((from_env, "pw-env"), (from_file, "pw-file"), (from_credential, "pw-cred")):
        assert_delivered(daemon, dashboard, device)
    assert_never_connected(wrong)
    log = wrong.log()
    assert log.count("refused the connection") >= 2, "it must keep retrying"
    assert "Traceback" not in log and "wrong-Pa55" not in log
    assert not results_of(dashboard, "pw-wrong")
    assert "lineguard-pw-wrong" not in "\n".join(broker_clients(broker.log_text()))


# -- 3. no plain-text fallback ------------------------------------------------


@pytest.mark.slow
def test_a_tls_daemon_never_talks_plain_mqtt_nor_sends_its_password_in_clear(
    tmp_path, pki, broker, make_collector
):
    # The broker accepts anyone in plain text: only the daemon itself can refuse.
    collector = make_collector(broker, [f"{PREFIX}/#"])
    recorder = RawRecorder()
    try:
        settings = {"username": "line", **tls_settings(pki["ca"])}
        env = {"LINEGUARD_MQTT_PASSWORD": SECRET}
        at_broker = start_daemon(tmp_path, "tls-plain", broker.port, *REFUSED_DRAIN, env=env, mqtt=settings)
        at_recorder = start_daemon(tmp_path, "tls-raw", recorder.port, *REFUSED_DRAIN, env=env, mqtt=settings)
        assert_never_connected(at_broker)
        assert_never_connected(at_recorder)
    finally:
        recorder.close()
    assert not [m for m in collector.messages if m.topic.startswith(f"{PREFIX}/tls-plain/")]
    log = broker.log_text()
    assert "disconnected due to protocol error" in log  # its TLS hello reached the broker...
    clients = "\n".join(broker_clients(log))
    assert "lineguard-tls-plain" not in clients and "u'line'" not in clients  # ...but it never became a client
    attempts = [sent for sent in recorder.connections if sent]  # b"": it stopped between connect and hello
    assert len(attempts) >= 2, "it must keep retrying"
    for sent in attempts:
        assert sent[:1] == b"\x16" and sent[1:2] == b"\x03", f"not a TLS handshake record: {sent[:16]!r}"
        assert SECRET.encode() not in sent and b"MQTT" not in sent


# -- 4. no password in logs, payloads or CLI output ---------------------------


def test_the_password_appears_in_no_log_payload_or_cli_output(tmp_path, make_broker, make_secure_collector):
    passwd = password_file(tmp_path, {DEVICE: SECRET, "dashboard": "dash-Pa55"})
    broker = make_broker([f"password_file {passwd}"], allow_anonymous=False)
    everything = make_secure_collector(broker.port, ["#"], username="dashboard", password="dash-Pa55")
    daemon = start_daemon(tmp_path, DEVICE, broker.port, env={"LINEGUARD_MQTT_PASSWORD": SECRET}, frames=5,
                          log_level="debug", mqtt={"username": DEVICE}, source={"fps": 10, "loop": True})
    try:
        assert daemon.wait_for_log(f"subscribed to {BASE}/cmd/#", 30), daemon.log()[-3000:]
        everything.publish(f"{BASE}/cmd/reload", b'{"request_id": "r1"}')
        everything.publish(f"{BASE}/cmd/threshold", b'{"threshold": "high"}')  # refused: a reply with a reason
        assert everything.wait_for(lambda m: len(everything.payloads(f"{BASE}/reply")) >= 2, 15)
        assert everything.wait_for(lambda m: everything.payloads(f"{BASE}/heatmap"), 15)
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    log = daemon.log()
    assert "Sending CONNECT" in log, "paho's debug log must be part of what is checked"
    assert SECRET not in log
    topics = lambda m: {x.topic.rsplit("/", 1)[-1] for x in m}
    assert everything.wait_for(lambda m: topics(m) >= {"status", "result", "stats", "reply"}, 15), topics(everything.messages)
    assert not [m.topic for m in everything.messages if SECRET.encode() in m.payload]

    env = {**NO_CREDENTIALS, "LINEGUARD_MQTT_PASSWORD": SECRET}
    check = run_cli("-v", "check-config", daemon.log_path.parent / "config.yaml", env=env)
    schema = run_cli("config-schema", env=env)
    for out in (check, schema):
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr
    mqtt_keys = json.loads(schema.stdout)["$defs"]["MqttConfig"]["properties"]
    assert "password" not in mqtt_keys, "the config must have no place for an inline password"


def test_an_inline_password_is_refused_without_echoing_it(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"device_id: {DEVICE}\nmqtt:\n  username: {DEVICE}\n  password: {SECRET}\n")
    for command in ("check-config", "run"):
        args = (command, config) if command == "check-config" else (command, "--config", config)
        out = run_cli(*args, env=NO_CREDENTIALS)
        assert out.returncode == 78
        assert "inline passwords are not supported" in out.stderr
        assert SECRET not in out.stdout + out.stderr


def test_a_password_pasted_into_password_env_is_not_echoed(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"device_id: {DEVICE}\nmqtt:\n  password_env: {SECRET}\n")
    out = run_cli("check-config", config, env=NO_CREDENTIALS)
    assert out.returncode == 78 and "mqtt.password_env" in out.stderr
    assert SECRET not in out.stdout + out.stderr


# -- 5. commands only from the device's own cmd/ topic ------------------------


def test_commands_act_only_from_the_own_cmd_topic_and_never_when_retained(tmp_path, broker, make_collector):
    collector = make_collector(broker, [f"{PREFIX}/#", f"other/{DEVICE}/#"])
    # Published before the daemon subscribes, so the broker hands it over flagged as retained.
    collector.publish(f"{BASE}/cmd/threshold", b'{"threshold": 111.0, "request_id": "retained"}', retain=True)
    daemon = start_daemon(tmp_path, DEVICE, broker.port, frames=4, source={"fps": 5, "loop": True})
    try:
        assert daemon.wait_for_log(f"ignoring retained command on {BASE}/cmd/threshold", 30), daemon.log()[-3000:]
        strangers = {f"{PREFIX}/cell-70/cmd/threshold": 222.0, f"{PREFIX}/cell-8/cmd/threshold": 333.0,
                     f"other/{DEVICE}/cmd/threshold": 444.0, f"{BASE}/cmdx/threshold": 555.0}
        for topic, value in strangers.items():
            collector.publish(topic, json.dumps({"threshold": value, "request_id": topic}))
        # Same connection, same order: once this one is answered, the ones before it were seen or ignored.
        collector.publish(f"{BASE}/cmd/threshold", b'{"threshold": 666.0, "request_id": "own"}')
        replies = lambda: [strict_json(p) for p in collector.payloads(f"{BASE}/reply")]  # noqa: E731
        stats = lambda: [strict_json(p)["threshold"] for p in collector.payloads(f"{BASE}/stats")]  # noqa: E731
        assert collector.wait_for(lambda _: 666.0 in stats(), 15), daemon.log()[-3000:]
        assert [(r["request_id"], r["ok"]) for r in replies()] == [("own", True)]
        assert not {111.0, *strangers.values()} & set(stats())
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]


# -- 6. the example ACL and broker config -------------------------------------


def example_broker_config(etc: Path, port: int) -> str:
    """examples/mosquitto/mosquitto.conf with its system paths moved under ``etc`` and loopback-only."""
    text = (EXAMPLES / "mosquitto.conf").read_text()
    moves = {"listener 8883\n": f"listener {port} {LOCALHOST}\n", "/etc/mosquitto/": f"{etc}/",
             "/var/lib/mosquitto/": f"{etc}/", "/var/log/mosquitto/": f"{etc}/", "/run/mosquitto/": f"{etc}/"}
    for old, new in moves.items():
        assert old in text, f"the example no longer has {old!r}: update this test"
        text = text.replace(old, new)
    # As root, mosquitto would switch to the "mosquitto" user, which cannot read the test's files.
    return f"user {getpass.getuser()}\n{text}"


def test_example_acl_and_broker_config_end_to_end(tmp_path, pki, make_broker, make_secure_collector):
    etc = tmp_path / "etc"
    (etc / "certs").mkdir(parents=True)
    (etc / "ca_certificates").mkdir()
    shutil.copy(pki["ca"], etc / "ca_certificates" / "plant-ca.crt")
    shutil.copy(pki["broker_cert"], etc / "certs" / "broker.crt")
    shutil.copy(pki["broker_key"], etc / "certs" / "broker.key")
    shutil.copy(EXAMPLES / "lineguard-acl.conf", etc / "lineguard-acl.conf")
    users = {DEVICE: "cell7-Pa55", "cell-8": "cell8-Pa55", "dashboard": "dash-Pa55"}
    password_file(etc, users)
    broker = make_broker(start=False)
    broker.config_path.write_text(example_broker_config(etc, broker.port))
    broker.start()

    def login(user: str, topics: list[str]) -> SecureCollector:
        return make_secure_collector(broker.port, topics, username=user, password=users[user], ca_file=pki["ca"])

    dashboard = login("dashboard", [f"{PREFIX}/#"])
    intruder = login("cell-8", [f"{BASE}/cmd/#", f"{PREFIX}/cell-8/cmd/#"])
    daemon = start_daemon(tmp_path, DEVICE, broker.port, frames=4, env={"LINEGUARD_MQTT_PASSWORD": users[DEVICE]},
                          log_level="debug", source={"fps": 5, "loop": True},
                          mqtt={"username": DEVICE, **tls_settings(pki["ca"])})
    try:
        assert daemon.wait_for_log(f"subscribed to {BASE}/cmd/#", 30), daemon.log()[-3000:]
        assert dashboard.wait_for(lambda _: results_of(dashboard, DEVICE), 15), daemon.log()[-3000:]

        # A device writes only its own non-command topics: spoofed verdicts and commands are dropped.
        intruder.publish(f"{BASE}/result", b'{"spoof": 1}')
        intruder.publish(f"{BASE}/cmd/threshold", b'{"threshold": 999.0, "request_id": "spoof"}')
        intruder.publish(f"{PREFIX}/cell-8/cmd/threshold", b'{"spoof": 1}')
        intruder.publish(f"{PREFIX}/cell-8/status", b"control")
        assert dashboard.wait_for(lambda _: b"control" in dashboard.payloads(f"{PREFIX}/cell-8/status"), 10)
        assert not [m.topic for m in dashboard.messages if b"spoof" in m.payload]

        # The dashboard commands a device; another device cannot read that command.
        dashboard.publish(f"{BASE}/cmd/threshold", b'{"threshold": 321.5, "request_id": "dash-1"}')
        dashboard.publish(f"{PREFIX}/cell-8/cmd/trigger", b"{}")
        replies = lambda: [strict_json(p) for p in dashboard.payloads(f"{BASE}/reply")]  # noqa: E731
        assert dashboard.wait_for(lambda _: replies(), 15), daemon.log()[-3000:]
        assert [(r["request_id"], r["ok"]) for r in replies()] == [("dash-1", True)]
        assert dashboard.wait_for(
            lambda _: any(strict_json(p)["threshold"] == 321.5 for p in dashboard.payloads(f"{BASE}/stats")), 10)
        assert intruder.wait_for(lambda m: any(x.topic == f"{PREFIX}/cell-8/cmd/trigger" for x in m), 10)
        assert not [m.topic for m in intruder.messages if m.topic.startswith(f"{BASE}/")]
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    assert "refused" not in daemon.log()
    assert dashboard.wait_for(lambda _: dashboard.payloads(f"{BASE}/status")[-1:] == [b"offline"], 10)
