"""The OPC UA server of a real daemon process, read and called by a real asyncua client on a loopback port: the
Station variables hold exactly the `result` published with the same seq, Trigger answers once per call (busy while
busy), SetThreshold follows the same range rule as cmd/threshold, and logins are enforced.

What is not run here: a server on a non-loopback address (the rule that such a config needs a certificate and a
login is checked on the config alone); everything else about security (passwords, certificates, SignAndEncrypt,
client certificates) runs on 127.0.0.1 with opcua.require_auth "always".
"""
from __future__ import annotations

import asyncio
import datetime
import signal
import socket
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edge.config.errors import ConfigError
from edge.config.load import parse_config
from edge.login_throttle import FREE_ATTEMPTS
from tests.support.broker import free_port, strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import run_cli

# The node map, as README.md documents it (read here from the README's names, not from edge/).
NAMESPACE = "urn:lineguard:opcua"
PASSWORD = "correct horse battery staple"
USER = "scada"
DELAY_MS = 2000  # the busy window the busy test aims into: wide enough for a loaded machine
CLIENT_URI = "urn:lineguard:test-client"


def node(index: int, name: str) -> ua.NodeId:
    return ua.NodeId(f"Station.{name}", index)


def make_certificate(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    """A self-signed certificate (DER) and its key (PEM) with ``uri`` as the application URI."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def connect(url: str, user: str | None = None, password: str | None = None,
                  channel: tuple[Path, Path] | None = None, identity: tuple[Path, Path] | None = None) -> Client:
    """A connected client: user/password, a SignAndEncrypt channel with ``channel``'s certificate, an X.509 login."""
    client = Client(url, timeout=15)
    client.application_uri = CLIENT_URI
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    if channel is not None:
        await client.set_security(SecurityPolicyBasic256Sha256, str(channel[0]), str(channel[1]),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
    if identity is not None:
        await client.load_client_certificate(str(identity[0]))
        await client.load_private_key(identity[1])
    await client.connect()
    return client


async def read(client: Client, *names: str) -> dict[str, object]:
    index = await client.get_namespace_index(NAMESPACE)
    values = await client.read_values([client.get_node(node(index, name)) for name in names])
    return dict(zip(names, values))


async def call(client: Client, method: str, *args: ua.Variant):
    index = await client.get_namespace_index(NAMESPACE)
    station = client.get_node(ua.NodeId("Station", index))
    return await station.call_method(node(index, method), *args)


def refused(url: str, **login) -> type[Exception] | None:
    """The error a login gets, or None when it is let in."""
    async def attempt():
        client = await connect(url, **login)
        await client.disconnect()
    try:
        asyncio.run(attempt())
    except Exception as exc:  # noqa: BLE001 - the type is what the test checks
        return type(exc)
    return None


def stop(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


# --- a secured server on loopback: logins, the last verdict, SetThreshold ---

@pytest.fixture
def secured(tmp_path, broker, make_collector):
    port = free_port()
    server_cert = make_certificate(tmp_path, "server", "urn:lineguard:cell-7")
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=6),
                          web={"keep_serving_after_replay": True},
                          opcua={"enabled": True, "port": port, "require_auth": "always", "username": USER,
                                 "certificate": str(server_cert[0]), "private_key": str(server_cert[1]),
                                 "trusted_clients": [str(make_certificate(tmp_path, "trusted", CLIENT_URI)[0])]})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/state"])
    daemon = DaemonProcess(config, {"LINEGUARD_OPCUA_PASSWORD": PASSWORD})
    assert daemon.wait_for_log("replay finished", 60), daemon.log()[-3000:]
    assert collector.wait_for(lambda m: len(results(collector)) == 6, 10)
    yield daemon, collector, f"opc.tcp://127.0.0.1:{port}/lineguard", tmp_path
    stop(daemon)


def test_the_station_variables_hold_the_last_published_result(secured):
    daemon, collector, url, _ = secured

    async def scenario():
        client = await connect(url, USER, PASSWORD)
        try:
            return await read(client, "Seq", "Verdict", "Score", "ScoreNorm", "Threshold", "PartId", "Timestamp",
                              "Reasons", "PassCount", "FailCount", "UnscorableCount", "State", "CurrentThreshold",
                              "Model")
        finally:
            await client.disconnect()

    values = asyncio.run(scenario())
    published = results(collector)
    last = max(published, key=lambda r: r["seq"])
    assert values["Seq"] == last["seq"] == 6
    assert values["Verdict"] == last["verdict"]
    assert values["Score"] == last["score"] and values["Threshold"] == last["threshold"]
    assert values["ScoreNorm"] == pytest.approx(last["score_norm"], abs=1e-6)  # the result rounds it to 6 places
    assert values["PartId"] == (last["part_id"] or "")
    assert values["Reasons"] == ([last["reason"]] if last["reason"] else [])
    stamp = values["Timestamp"].replace(tzinfo=datetime.timezone.utc) if values["Timestamp"].tzinfo is None \
        else values["Timestamp"]
    assert stamp == datetime.datetime.fromisoformat(last["ts"].replace("Z", "+00:00"))
    counts = {v: sum(r["verdict"] == v for r in published) for v in ("pass", "fail", "unscorable")}
    assert (values["PassCount"], values["FailCount"], values["UnscorableCount"]) == (
        counts["pass"], counts["fail"], counts["unscorable"])
    assert counts["pass"] and counts["fail"]  # the sample frames hold both
    assert values["State"] == "ended" and values["Model"] == last["model"]["name"]
    assert values["CurrentThreshold"] == last["threshold"]


def test_logins_are_enforced_when_required(secured):
    _, _, url, folder = secured
    assert refused(url) is ua.uaerrors.BadIdentityTokenRejected  # anonymous: not offered
    assert refused(url, user=USER, password="wrong") is ua.uaerrors.BadUserAccessDenied
    assert refused(url, user="someone", password=PASSWORD) is ua.uaerrors.BadUserAccessDenied
    assert refused(url, user=USER, password=PASSWORD) is None
    channel = make_certificate(folder, "channel", CLIENT_URI)
    assert refused(url, user=USER, password=PASSWORD, channel=channel) is None  # Basic256Sha256 SignAndEncrypt
    trusted = (folder / "trusted.der", folder / "trusted.pem")
    assert refused(url, channel=trusted, identity=trusted) is None  # a trusted client certificate logs in alone
    assert refused(url, channel=channel, identity=channel) is ua.uaerrors.BadUserAccessDenied  # an unknown one not


def test_wrong_passwords_in_a_row_lock_the_peer_out_before_its_password_is_checked(secured):
    daemon, _, url, folder = secured
    for _ in range(FREE_ATTEMPTS):
        assert refused(url, user=USER, password="guess") is ua.uaerrors.BadUserAccessDenied
    # Locked out: the right password is not even checked, and the log says why, naming the peer.
    assert refused(url, user=USER, password=PASSWORD) is ua.uaerrors.BadUserAccessDenied
    assert daemon.wait_for_log("opcua: login from 127.0.0.1 refused without a check: too many wrong passwords", 10)
    assert daemon.log().count("opcua: wrong user or password from 127.0.0.1") == FREE_ATTEMPTS
    trusted = (folder / "trusted.der", folder / "trusted.pem")
    assert refused(url, channel=trusted, identity=trusted) is None  # a certificate login is no password guess
    assert PASSWORD not in daemon.log()


def test_set_threshold_within_range_applies_and_out_of_range_is_refused(secured):
    daemon, collector, url, _ = secured
    states = lambda: [strict_json(p) for p in collector.payloads(f"{BASE}/state")]
    before = states()[-1]["threshold"]
    wanted = round(before * 1.5, 4)

    async def scenario():
        client = await connect(url, USER, PASSWORD)
        try:
            applied = await call(client, "SetThreshold", ua.Variant(wanted, ua.VariantType.Double))
            shown = await read(client, "CurrentThreshold", "LastCallReason")
            with pytest.raises(ua.uaerrors.BadOutOfRange):
                await call(client, "SetThreshold", ua.Variant(before * 1e6, ua.VariantType.Double))
            with pytest.raises(ua.uaerrors.BadInvalidArgument):
                await call(client, "SetThreshold", ua.Variant(-1.0, ua.VariantType.Double))
            refusal = await read(client, "CurrentThreshold", "LastCallReason")
            index = await client.get_namespace_index(NAMESPACE)
            with pytest.raises(ua.UaStatusCodeError):  # the variables are read-only
                await client.get_node(node(index, "Verdict")).write_value(ua.Variant("pass", ua.VariantType.String))
            return applied, shown, refusal
        finally:
            await client.disconnect()

    applied, shown, refusal = asyncio.run(scenario())
    assert applied == wanted and shown["CurrentThreshold"] == wanted
    assert collector.wait_for(lambda m: states()[-1]["threshold"] == wanted, 10), states()[-1]
    assert refusal["CurrentThreshold"] == wanted
    assert "outside" in refusal["LastCallReason"] or "not a finite number" in refusal["LastCallReason"]
    assert "SetThreshold refused: threshold" in daemon.log() and "the range allowed for model" in daemon.log()
    assert states()[-1]["threshold"] == wanted  # a refusal changes nothing


# --- triggered mode on an anonymous loopback server ---

@pytest.fixture
def triggered(tmp_path, broker, make_collector):
    port = free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=3),
                          trigger={"mode": "triggered", "delay_ms": DELAY_MS, "timeout_s": 2},
                          web={"keep_serving_after_replay": True}, opcua={"enabled": True, "port": port})
    collector = make_collector(broker, [f"{BASE}/result"])
    daemon = DaemonProcess(config)
    assert daemon.wait_for_log("ready:", 60), daemon.log()[-3000:]
    yield daemon, collector, f"opc.tcp://127.0.0.1:{port}/lineguard"
    stop(daemon)


def test_trigger_answers_once_with_the_published_result_and_busy_while_busy(triggered):
    daemon, collector, url = triggered

    async def scenario():
        first, second = await connect(url), await connect(url)
        try:
            answers = [await call(first, "Trigger", ua.Variant("part-1", ua.VariantType.String))]
            pending = asyncio.create_task(call(first, "Trigger", ua.Variant("part-2", ua.VariantType.String)))
            # Read on the caller's own connection while its call waits for the part (DELAY_MS): the server
            # answers the read before the call.
            for _ in range(200):
                if (await read(first, "Busy"))["Busy"]:
                    break
                await asyncio.sleep(0.02)
            read_while_calling = not pending.done()
            busy = await call(second, "Trigger", ua.Variant("", ua.VariantType.String))
            answers.append(await pending)
            answers.append(await call(first, "Trigger", ua.Variant("part-3", ua.VariantType.String)))
            answers.append(await call(first, "Trigger", ua.Variant("part-4", ua.VariantType.String)))  # replay over
            counts = await read(second, "BusyCount", "AnsweredCount", "LastAnswer", "Seq", "PartId")
            return answers, busy, counts, read_while_calling
        finally:
            await first.disconnect()
            await second.disconnect()

    answers, busy, counts, read_while_calling = asyncio.run(scenario())
    assert read_while_calling
    assert busy[3] == "busy" and busy[0] == 0 and "busy" in busy[4]
    inspected, last = answers[:3], answers[3]
    assert [a[3] for a in inspected] == ["inspected"] * 3
    assert collector.wait_for(lambda m: len(results(collector)) == 3, 10)
    published = {r["seq"]: r for r in results(collector)}
    for (seq, verdict, score, _, _), part in zip(inspected, ("part-1", "part-2", "part-3")):
        assert published[seq]["verdict"] == verdict and published[seq]["score"] == score
        assert published[seq]["part_id"] == part
    assert last[0] == 0 and last[3] == "no_frame"  # answered, though the replay has no frame left
    assert counts == {"BusyCount": 1, "AnsweredCount": 5, "LastAnswer": "no_frame", "Seq": 3, "PartId": "part-3"}
    assert len(results(collector)) == 3  # no call inspected twice


# --- what stops start-up or a config ---

def test_a_taken_port_stops_start_up_with_the_key(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                              opcua={"enabled": True, "port": port})
        checked = run_cli("check-config", str(config))
        daemon = DaemonProcess(config)
        assert daemon.wait(60) == 78, daemon.log()[-3000:]
    assert f"opcua.port: cannot listen on 127.0.0.1:{port}" in daemon.log()
    assert checked.returncode == 78
    assert f"opcua.port: cannot listen on 127.0.0.1:{port}" in checked.stdout + checked.stderr


def test_a_username_without_its_password_stops_start_up(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                          opcua={"enabled": True, "port": free_port(), "username": USER})
    daemon = DaemonProcess(config, {"LINEGUARD_OPCUA_PASSWORD": ""})
    assert daemon.wait(60) == 78, daemon.log()[-3000:]
    assert "opcua.username is set but no OPC UA password is" in daemon.log()


def errors_of(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=tmp_path)
    return caught.value.errors


def test_off_loopback_needs_a_certificate_and_a_login_at_config_time(tmp_path):
    (tmp_path / "s.der").write_bytes(b"x")
    (tmp_path / "s.pem").write_bytes(b"x")
    head = "source: {path: frames}\nopcua:\n  enabled: true\n"
    [error] = errors_of(head + "  host: 0.0.0.0\n", tmp_path)
    assert error.startswith("config.yaml:4: opcua.host: 0.0.0.0 is not a loopback address"), error
    assert "opcua.certificate" in error and "opcua.username" in error
    [error] = errors_of(head + "  certificate: s.der\n  private_key: s.pem\n  host: 10.0.0.5\n", tmp_path)
    assert error.startswith("config.yaml:6: opcua.host:") and "a login" in error and "certificate" not in error
    [error] = errors_of(head + "  username: scada\n  host: '::'\n", tmp_path)
    assert error.startswith("config.yaml:5: opcua.host:") and "SecurityPolicy None is for loopback only" in error
    secured = parse_config(head + "  username: scada\n  certificate: s.der\n  private_key: s.pem\n  host: 0.0.0.0\n",
                           base_dir=tmp_path)
    assert not secured.opcua.anonymous_allowed and not secured.opcua.loopback
    [error] = errors_of(head + "  require_auth: always\n", tmp_path)
    assert error.startswith("config.yaml:4: opcua.require_auth: is always but nobody could log in"), error
    assert parse_config(head, base_dir=tmp_path).opcua.anonymous_allowed  # loopback: anonymous, as the page
    parse_config("source: {path: frames}\nopcua:\n  host: 0.0.0.0\n", base_dir=tmp_path)  # disabled: not served
