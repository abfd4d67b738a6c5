"""The Sparkplug B edge node, checked by a host application with its own decoder (tests/support/sparkplug_host.py)
on a real Mosquitto while the real daemon inspects: the spec's rules on the messages as received, and the outbox's
promise (no verdict lost across a broker outage and a SIGKILL), plus the parts that need no broker."""
from __future__ import annotations

import signal
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.config.errors import ConfigError
from edge.config.load import load_config, parse_config
from edge.publish.outbox import Outbox
from edge.publish.outputs import OutputParts
from edge.publish.sparkplug import node as sparkplug_node
from edge.publish.sparkplug import payloads
from edge.publish.sparkplug.link import BdSeqStore
from tests.support import sparkplug_host as host
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config

GROUP, NODE, DEVICE = "plant-a", "line-3", "camera"
SPARKPLUG = {"enabled": True, "group_id": GROUP, "edge_node_id": NODE}
QUIET = {"heatmap": "never"}
NO_EVIDENCE = {"evidence": "never"}
WAIT_S = 30.0
NODE_METRICS = {"bdSeq": host.INT64, "Node Control/Rebirth": host.BOOLEAN,
                "Properties/Software Version": host.STRING, "Properties/Station": host.STRING}
DEVICE_METRICS = {"Seq": host.UINT64, "Id": host.STRING, "Verdict": host.STRING, "Score": host.DOUBLE,
                  "Threshold": host.DOUBLE, "PartId": host.STRING, "Image": host.STRING, "Alert": host.BOOLEAN,
                  "LatencyMs": host.DOUBLE, "Model": host.STRING, "Counters/Pass": host.UINT64,
                  "Counters/Fail": host.UINT64, "Counters/Unscorable": host.UINT64, "Counters/Alerts": host.UINT64,
                  "State": host.STRING}


# ---------------------------------------------------------------- the host application


@dataclass
class Birth:
    """One node session as the host follows it: from an NBIRTH to the next NBIRTH or the NDEATH."""

    bdseq: int
    nbirth: host.Message
    dbirth: host.Message | None = None
    data: list[tuple[host.Message, dict]] = field(default_factory=list)  # each DDATA with its metrics by name
    death: host.Message | None = None


def node_messages(collector) -> list[host.Message]:
    """The node's messages as received, exact repeats (a QoS 1 redelivery by the broker) dropped, NCMD left out."""
    seen, found = set(), []
    for index, received in enumerate(collector.messages):
        if (received.topic, received.payload) in seen:
            continue
        seen.add((received.topic, received.payload))
        message = host.parse(index, received.topic, received.payload, received.retain)
        if message is not None and message.kind != "NCMD":
            found.append(message)
    return found


def check_metric_definitions(message: host.Message, expected: dict[str, int]) -> dict[str, host.Metric]:
    """A birth gives every metric its name, datatype and a value (or an explicit null), in the datatype's field."""
    by_name = {metric.name: metric for metric in message.payload.metrics}
    assert len(by_name) == len(message.payload.metrics), "a metric name given twice"
    assert {name: metric.datatype for name, metric in by_name.items()} == expected
    for name, metric in by_name.items():
        assert metric.is_null or metric.value_field == host.VALUE_FIELD_OF[metric.datatype], name
        assert metric.timestamp is not None, name
    return by_name


def follow(messages: list[host.Message]) -> list[Birth]:
    """Apply the spec's rules to the node's messages in arrival order; the node sessions they form."""
    births: list[Birth] = []
    aliases: dict[int, str] = {}
    expected_seq = None
    for message in messages:
        assert (message.group, message.node) == (GROUP, NODE), message
        assert not message.retain, f"{message.kind} retained"
        assert message.device == (DEVICE if message.kind.startswith("D") else None), message
        payload = message.payload
        assert payload.timestamp, f"{message.kind} without a timestamp"
        if message.kind == "NDEATH":
            assert payload.seq is None and [m.name for m in payload.metrics] == ["bdSeq"]
            assert births and births[-1].death is None, "an NDEATH with no node session"
            assert payload.metrics[0].value == births[-1].bdseq, "the NDEATH's bdSeq is not its NBIRTH's"
            births[-1].death, expected_seq = message, None
            continue
        if message.kind == "NBIRTH":
            assert payload.seq == 0, "an NBIRTH's seq is 0"
            metrics = check_metric_definitions(message, NODE_METRICS)
            assert metrics["Node Control/Rebirth"].value is False
            assert 0 <= metrics["bdSeq"].value <= 255
            births.append(Birth(metrics["bdSeq"].value, message))
            aliases = {m.alias: m.name for m in metrics.values() if m.alias is not None}
            expected_seq = 1
            continue
        assert births and births[-1].death is None, f"{message.kind} outside a node session (before an NBIRTH)"
        assert payload.seq == expected_seq, f"{message.kind} seq {payload.seq}, expected {expected_seq}"
        expected_seq = (expected_seq + 1) % 256
        birth = births[-1]
        if message.kind == "DBIRTH":
            assert birth.dbirth is None and not birth.data, "a DBIRTH not right after its NBIRTH"
            metrics = check_metric_definitions(message, DEVICE_METRICS)
            new = {m.alias: m.name for m in metrics.values()}
            assert None not in new and not set(new) & set(aliases), "aliases are unique on the node"
            aliases.update(new)
            birth.dbirth = message
            continue
        assert message.kind == "DDATA", message.kind
        assert birth.dbirth is not None, "DDATA before the session's DBIRTH"
        assert all(m.name is None and m.datatype is None for m in payload.metrics), "DDATA by alias only"
        birth.data.append((message, {aliases[m.alias]: (None if m.is_null else m.value, m.is_historical)
                                     for m in payload.metrics}))
    return births


def verdicts(births: list[Birth]) -> list[dict]:
    """Every verdict DDATA's metric values, in arrival order."""
    return [{name: value for name, (value, _) in metrics.items()}
            for birth in births for _, metrics in birth.data if "Seq" in metrics]


def check_history_flags(births: list[Birth]) -> int:
    """A DDATA is historical when its session's births already reported a newer verdict; how many were."""
    historical = 0
    for birth in births:
        reported = host.value_by_name(birth.dbirth.payload.metrics, "Seq")
        flags = [(metrics["Seq"][0], metrics["Seq"][1]) for _, metrics in birth.data if "Seq" in metrics]
        for seq, is_historical in flags:
            if reported is not None:
                assert is_historical == (seq <= reported), (seq, reported)
        assert [f for _, f in flags] == sorted((f for _, f in flags), reverse=True), "history after live data"
        historical += sum(f for _, f in flags)
    return historical


def delivered_once_each(got: list[dict], last_seq: int, waiting: set[int] = frozenset()) -> int:
    """Every verdict 1..last_seq arrived but those still ``waiting`` in the outbox for the next start; a verdict
    that came twice came as the same verdict (the same Id: a re-send of a row whose acknowledgement a broken
    connection or a kill lost). The number of re-sends."""
    first: dict[int, dict] = {}
    for values in got:
        seq = values["Seq"]
        assert first.setdefault(seq, values) == values, f"verdict {seq} came twice, differently"

    assert sorted(set(first) | waiting) == list(range(1, last_seq + 1)), "a verdict neither sent nor kept"
    return len(got) - len(first)


def outbox_state(state_dir: Path) -> tuple[int, int, set[int]]:
    """Rows left in the outbox, the last verdict seq, and the seqs of the DDATA rows left."""
    with sqlite3.connect(state_dir / "outbox.sqlite3") as db:
        rows = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        last_seq = max(db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0],
                       db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])
        held = {seq for (seq,) in db.execute("SELECT seq FROM messages WHERE topic = ?", (payloads.HELD_DDATA,))}
    return rows, last_seq, held


def kinds(collector) -> list[str]:
    return [m.kind for m in node_messages(collector)]


def data_since_birth(collector) -> int:
    """DDATA received since the latest NBIRTH."""
    seen = kinds(collector)
    return seen[len(seen) - seen[::-1].index("NBIRTH"):].count("DDATA") if "NBIRTH" in seen else 0


# ---------------------------------------------------------------- with a real broker and the real daemon


@pytest.mark.parametrize("data_qos", [1, 0])
def test_more_than_256_verdicts_wrap_the_seq_and_each_verdict_comes_once(tmp_path, broker, make_collector, data_qos):
    frames = sample_folder(tmp_path)
    count = 300
    config = write_config(tmp_path, broker.port, frames, source={"loop": True}, mqtt=QUIET,
                          storage=NO_EVIDENCE, sparkplug={**SPARKPLUG, "data_qos": data_qos})
    application = make_collector(broker, ["spBv1.0/#"])
    station = make_collector(broker, [f"{BASE}/result"])
    daemon = DaemonProcess(config, None, "--max-frames", str(count))
    assert daemon.wait(120) == 0, daemon.log()[-3000:]
    assert application.wait_for(lambda _: "NDEATH" in kinds(application), 10), daemon.log()[-3000:]

    births = follow(node_messages(application))
    assert len(births) == 1 and births[0].bdseq == 0, "a first connection's bdSeq is 0"
    assert births[0].death is not None, "a clean stop publishes the NDEATH"
    sequence = [m.payload.seq for m in node_messages(application) if m.kind != "NDEATH"]
    assert len(sequence) > 256 and sequence[256] == 0, "the seq wraps from 255 to 0"
    got = verdicts(births)
    assert delivered_once_each(got, count) == 0 and len(got) == count
    check_history_flags(births)
    by_seq = {r["seq"]: r for r in results(station)}  # the same verdicts as <base>/result says them
    for values in got:
        result = by_seq[values["Seq"]]
        assert (values["Id"], values["Verdict"], values["Image"], values["PartId"]) == (
            result["id"], result["verdict"], result["image"], result["part_id"])
        assert values["Score"] == result["score"] and values["Threshold"] == result["threshold"]
    last = got[-1]
    assert sum(last[f"Counters/{name}"] for name in ("Pass", "Fail", "Unscorable")) == count
    assert outbox_state(tmp_path / "state") == (0, count, set())


def test_ncmd_rebirth_brings_fresh_births_and_sigterm_the_ndeath(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=6), source={"fps": 10, "loop": True},
                          mqtt=QUIET, storage=NO_EVIDENCE, sparkplug=SPARKPLUG)
    application = make_collector(broker, ["spBv1.0/#"])
    daemon = DaemonProcess(config)
    ncmd = f"spBv1.0/{GROUP}/NCMD/{NODE}"
    try:
        for rebirth, by_alias in enumerate((None, 1), start=2):
            assert application.wait_for(lambda _: data_since_birth(application) >= 3, WAIT_S), daemon.log()[-3000:]
            application.publish(ncmd, host.rebirth_command(1, by_alias=by_alias), qos=0)
            assert application.wait_for(lambda _: kinds(application).count("NBIRTH") == rebirth, 10), \
                daemon.log()[-3000:]
        assert application.wait_for(lambda _: kinds(application)[-1] == "DDATA", 10)
        application.publish(ncmd, host.rebirth_command(1, by_alias=2), qos=0)  # another metric: no rebirth
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    assert application.wait_for(lambda _: "NDEATH" in kinds(application), 10)
    births = follow(node_messages(application))
    assert [b.bdseq for b in births] == [0, 0, 0], "a rebirth keeps the connection, so its bdSeq"
    assert all(b.dbirth is not None for b in births) and births[-1].death is not None
    assert births[1].data and births[2].data, "data goes on after each rebirth"
    got = verdicts(births)
    _, last_seq, waiting = outbox_state(tmp_path / "state")  # a stop does not wait for the last ones: kept
    assert delivered_once_each(got, last_seq, waiting) == 0
    check_history_flags(births)
    states = [host.value_by_name(b.dbirth.payload.metrics, "State") for b in births]
    assert states[-1] == "running", states


@pytest.mark.slow
def test_outage_and_sigkill_lose_no_verdict_and_each_connection_births_first(tmp_path, make_broker, make_collector):
    # The host's session outlives the broker's restart and keeps the births (QoS 0) queued like the data.
    broker = make_broker(["queue_qos0_messages true"], persistence=True)
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 10, "loop": True},
                          mqtt=QUIET, storage={"dir": str(tmp_path / "state"), "drain_timeout_s": 30, **NO_EVIDENCE},
                          sparkplug=SPARKPLUG)
    application = make_collector(broker, ["spBv1.0/#"], client_id="scada", clean_session=False)
    first = DaemonProcess(config)
    try:
        assert application.wait_for(lambda _: kinds(application).count("DDATA") >= 5, WAIT_S), first.log()[-3000:]
        broker.stop()
        threading.Event().wait(3.0)  # verdicts go on into the outbox
        broker.start()
        assert application.wait_for(lambda _: kinds(application).count("NBIRTH") == 2
                                    and kinds(application)[-1] == "DDATA", WAIT_S), first.log()[-3000:]
        threading.Event().wait(1.0)
        first.kill()  # the broker publishes the will: NDEATH with this connection's bdSeq
        assert application.wait_for(lambda _: "NDEATH" in kinds(application), 10)
    finally:
        first.kill()
    second = DaemonProcess(config, None, "--max-frames", "20")
    try:
        assert second.wait(90) == 0, second.log()[-3000:]
    finally:
        second.kill()
    assert application.wait_for(lambda _: kinds(application).count("NBIRTH") == 3
                                and kinds(application)[-1] == "NDEATH", 10), " ".join(kinds(application))

    births = follow(node_messages(application))
    assert [b.bdseq for b in births] == [0, 1, 2], "one more per connection, and on after a restart"
    # Mosquitto publishes the wills of those connected when it stops, so the first session may end in one too.
    assert births[1].death and births[2].death, "the will on SIGKILL, an NDEATH on a clean stop"
    rows_left, last_seq, _ = outbox_state(tmp_path / "state")
    assert rows_left == 0, second.log()[-3000:]
    resent = delivered_once_each(verdicts(births), last_seq)
    assert check_history_flags(births) > 0, "what waited out the outage came as history after the births"
    print(f"{last_seq} verdicts, {resent} re-sent after a connection change (the host keeps the first)")


# ---------------------------------------------------------------- without a broker


def test_the_seq_wraps_and_a_birth_starts_it_at_0():
    sequence = payloads.Sequence()
    seen = []
    for _ in range(300):
        seen.append(sequence.peek())
        sequence.advance()
    assert seen == [n % 256 for n in range(300)]
    sequence.restart()
    assert sequence.peek() == 0
    stored = payloads.verdict_data({"Seq": 7, "Verdict": "pass"}, 1234)
    sent = host.decode(payloads.data_to_send(stored, 255, historical=True))
    assert sent.seq == 255 and [(m.alias, m.value, m.is_historical, m.timestamp) for m in sent.metrics] == [
        (10, 7, True, 1234), (12, "pass", True, 1234)]
    with pytest.raises(ValueError):
        payloads.data_to_send(b"\xff\xff", 0, historical=False)


def test_bdseq_goes_on_from_the_stored_one_and_wraps(tmp_path):
    path = tmp_path / "sparkplug-bdseq"
    store = BdSeqStore(path)
    assert store.following(None) == 0
    store.used(254)
    assert BdSeqStore(path).following(None) == 255 and store.following(255) == 0
    path.write_text("300\n")
    assert BdSeqStore(path).following(None) == 0  # not a bdSeq: start again


def test_ncmd_rebirth_is_read_by_name_or_alias():
    assert payloads.rebirth_requested(host.rebirth_command(1))
    assert payloads.rebirth_requested(host.rebirth_command(1, by_alias=payloads.REBIRTH.alias))
    assert not payloads.rebirth_requested(host.rebirth_command(1, by_alias=2))
    with pytest.raises(ValueError):
        payloads.rebirth_requested(b"\x0a")


@pytest.mark.parametrize("key, value, problem", [
    ("group_id", "plant/a", "must not contain '/'"),
    ("group_id", "plant+", "must not contain '+'"),
    ("edge_node_id", "line#3", "must not contain '#'"),
    ("device_id", "cam/+", "must not contain '+' or '/'"),
    ("group_id", "", "must not be empty"),
])
def test_bad_sparkplug_ids_are_config_errors_with_their_line(tmp_path, key, value, problem):
    text = f"source:\n  path: .\nsparkplug:\n  enabled: true\n  {key}: {value!r}\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "config.yaml", tmp_path)
    assert f"config.yaml:5: sparkplug.{key}: " in str(refused.value) and problem in str(refused.value)


def test_sparkplug_without_mqtt_is_a_config_error_with_its_line(tmp_path):
    text = "source:\n  path: .\nmqtt:\n  enabled: false\nsparkplug:\n  enabled: true\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "config.yaml", tmp_path)
    assert "config.yaml:5: sparkplug: enabled needs mqtt.enabled" in str(refused.value)


def test_node_id_defaults_to_the_device_id(tmp_path):
    cfg = parse_config("source:\n  path: .\nsparkplug:\n  enabled: true\n", "config.yaml", tmp_path)
    assert (cfg.sparkplug.group_id, cfg.sparkplug_node_id, cfg.sparkplug.device_id) == (
        "lineguard", cfg.device_id, "camera")


def test_held_ddata_left_by_an_earlier_run_goes_once_sparkplug_is_off(tmp_path):
    cfg = load_config(write_config(tmp_path, None, tmp_path))
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        for seq in (1, 2):
            outbox.put(seq, [(f"{BASE}/result", b"{}", 1), (payloads.HELD_DDATA, b"", 1)])
        assert sparkplug_node.build(OutputParts(lambda: cfg, None, None, outbox)) is None
        assert [row.topic for row in outbox.pending()] == [f"{BASE}/result"] * 2
        assert outbox.last_seq == 2
