"""The examples under examples/ run against the real daemon: the Node-RED flow's MQTT topics are ones the daemon
publishes or obeys, its function nodes run (in Node.js) on the daemon's real messages, and every metric the
Grafana dashboard queries is in a real scrape."""
from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edge.commands import COMMANDS
from edge.publish import messages
from tests.support.broker import free_port, strict_json
from tests.support.daemon_harness import DaemonProcess, sample_folder, write_config
from tests.support.helpers import ROOT
from tests.support.mqtt5 import Mqtt5Collector

FLOW = json.loads((ROOT / "examples" / "node-red" / "lineguard-flow.json").read_text())
DASHBOARD = json.loads((ROOT / "examples" / "grafana" / "lineguard-dashboard.json").read_text())
FLOW_ENV = {item["name"]: item["value"] for item in next(n for n in FLOW if n["type"] == "tab")["env"]}
FLOW_BASE = FLOW_ENV["LINEGUARD_STATION"]  # the one place the flow names its station
PUBLISHED = {"status", messages.RESULT, messages.ALERT, messages.HEATMAP, messages.STATE, messages.STATS,
             messages.REPLY}
OBEYED = {f"cmd/{name}" for name in COMMANDS}
NODE_JS = shutil.which("node") or shutil.which("nodejs")


def flow_nodes(kind: str) -> list[dict]:
    return [node for node in FLOW if node["type"] == kind]


def run_functions(steps: list[dict], env: dict = FLOW_ENV) -> list[dict]:
    """Run function nodes of the flow on messages, in order, with one shared flow context and the flow's
    environment variables."""
    functions = {node["id"]: node["func"] for node in flow_nodes("function")}
    assert NODE_JS, "Node.js is needed to run the Node-RED example's function nodes"
    done = subprocess.run([NODE_JS, str(ROOT / "tests" / "support" / "node_red_function.js")], check=True,
                          input=json.dumps({"functions": functions, "steps": steps, "env": env}), capture_output=True,
                          text=True, timeout=60)
    return json.loads(done.stdout)


def subscriptions(env: dict = FLOW_ENV) -> dict[str, dict]:
    """What the flow subscribes to on deploy: topic -> the "mqtt in" node the subscription goes to (each output of
    the inject's function is wired to one)."""
    [inject] = flow_nodes("inject")
    [subscriber] = [node for node in FLOW if node["id"] == inject["wires"][0][0]]
    [outcome] = run_functions([{"node": subscriber["id"], "msg": {}}], env)
    by_id = {node["id"]: node for node in FLOW}
    topics = {}
    for msg, wires in zip(outcome["result"], subscriber["wires"]):
        [target] = [by_id[target] for target in wires]
        assert target["type"] == "mqtt in" and target["inputs"] == 1 and msg["action"] == "subscribe"
        topics[msg["topic"]["topic"]] = target
    return topics


def command_topics(env: dict = FLOW_ENV) -> dict[str, tuple[str, dict]]:
    """What each dashboard control sends to: control id -> (topic, the "mqtt out" node)."""
    by_id = {node["id"]: node for node in FLOW}
    sent = {}
    for control in flow_nodes("ui_slider") + flow_nodes("ui_button"):
        [function] = [by_id[target] for target in control["wires"][0]]
        [outcome] = run_functions([{"node": function["id"], "msg": {"topic": control["topic"], "payload": 1}}], env)
        [out] = [by_id[target] for target in function["wires"][0]]
        assert out["type"] == "mqtt out" and out["topic"] == ""  # the topic comes with the message
        sent[control["id"]] = (outcome["result"]["topic"], out)
    return sent


def test_the_node_red_flow_is_wired_to_topics_the_daemon_uses():
    ids = {node["id"] for node in FLOW}
    assert len(ids) == len(FLOW)
    for node in FLOW:
        for output in node.get("wires", []):
            assert set(output) <= ids, node["id"]
        if node["type"] in ("mqtt in", "mqtt out"):
            assert node["broker"] in ids
        assert node.get("group", "lg.ui.group") in ids
    assert [node["protocolVersion"] for node in flow_nodes("mqtt-broker")] == ["5"]  # heatmaps name their result
    topics = subscriptions()
    assert {node["id"] for node in topics.values()} == {node["id"] for node in flow_nodes("mqtt in")}
    for topic in topics:
        assert topic.removeprefix(f"{FLOW_BASE}/") in PUBLISHED, topic
    for topic, _ in command_topics().values():
        assert topic.removeprefix(f"{FLOW_BASE}/") in OBEYED, topic
    # The station is named in one place: another value there moves every topic, and no node names one itself.
    other = {"LINEGUARD_STATION": "plant/cell-9"}
    assert all(topic.startswith("plant/cell-9/") for topic in subscriptions(other))
    assert all(topic.startswith("plant/cell-9/cmd/") for topic, _ in command_topics(other).values())
    assert FLOW_BASE not in json.dumps([node for node in FLOW if node["type"] != "tab"])


def test_the_node_red_flow_runs_on_the_daemons_real_messages(tmp_path, broker):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=6), device_id="station-1",
                          source={"fps": 10, "loop": True})
    by_topic = subscriptions()
    node_red = Mqtt5Collector(broker.host, broker.port, list(by_topic))
    daemon = DaemonProcess(config)
    try:
        topics = lambda: {m.topic for m in node_red.messages}  # noqa: E731
        wanted = set(by_topic) - {f"{FLOW_BASE}/reply"}
        assert node_red.wait_for(lambda _: wanted <= topics(), 30), (wanted - topics(), daemon.log()[-2000:])
        threshold = strict_json([m for m in node_red.messages if m.topic.endswith("/state")][-1].payload)["threshold"]
        sent = command_topics()
        [slider], [button] = flow_nodes("ui_slider"), flow_nodes("ui_button")
        # What the flow sends: the slider's number as text (as "mqtt out" writes a number), the button's payload.
        node_red.publish(sent[slider["id"]][0], str(round(threshold * 1.2, 1)))
        node_red.publish(sent[button["id"]][0], button["payload"])
        replies = lambda: [strict_json(m.payload) for m in node_red.messages if m.topic.endswith("/reply")]  # noqa: E731
        assert node_red.wait_for(lambda _: len(replies()) >= 2, 15), daemon.log()[-2000:]
        assert sorted((r["command"], r["ok"]) for r in replies()[:2]) == [("threshold", True), ("trigger", True)]
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
        node_red.close()

    steps = []
    for message in node_red.messages:
        source = by_topic[message.topic]
        msg = {"topic": message.topic, "userProperties": message.user_properties}
        if source["datatype"] == "buffer":
            msg["payload_base64"] = base64.b64encode(message.payload).decode()
        else:
            msg["payload"] = json.loads(message.payload) if source["datatype"] == "json" else message.payload.decode()
        steps += [{"node": target, "msg": msg} for target in source["wires"][0] if target.startswith("lg.fn.")]
    outputs = run_functions(steps)

    results = {strict_json(m.payload)["seq"]: strict_json(m.payload) for m in node_red.messages
               if m.topic.endswith("/result")}
    views = [o["result"]["payload"] for o in outputs if o["node"] == "lg.fn.match" and o["result"]]
    heatmaps = [m for m in node_red.messages if m.topic.endswith("/heatmap")]
    assert len(views) == len(heatmaps) > 0  # every heatmap was paired with its result
    for view in views:
        result = results[view["seq"]]
        assert view["verdict"] == result["verdict"] == "fail"
        assert view["boxes"] == [region["heatmap"] for region in result["regions"]] != []
        assert base64.b64decode(view["src"].removeprefix("data:image/jpeg;base64,"))[:2] == b"\xff\xd8"
    alerts = [o["result"]["payload"] for o in outputs if o["node"] == "lg.fn.alert"]
    assert alerts and all(re.search(r"failed: score [\d.]+ >= [\d.]+ \(seq \d+, \d+ region", a) for a in alerts)
    states = [o["result"] for o in outputs if o["node"] == "lg.fn.state"]
    assert states[-1][0]["payload"] == strict_json(
        [m for m in node_red.messages if m.topic.endswith("/state")][-1].payload)["threshold"]
    assert any(s[1]["payload"].startswith("running") for s in states)
    # Over MQTT 3.1.1 the heatmap comes without properties: the view shows it without boxes.
    [alone] = run_functions([{"node": "lg.fn.match", "msg": {"topic": heatmaps[0].topic, "payload_base64":
                                                              base64.b64encode(heatmaps[0].payload).decode()}}])
    assert alone["result"]["payload"]["boxes"] == [] and alone["result"]["payload"]["seq"] is None


def dashboard_queries() -> list[str]:
    queries = [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]
    return queries + [variable["definition"] for variable in DASHBOARD["templating"]["list"]]


def test_every_metric_the_grafana_dashboard_queries_is_in_a_real_scrape(tmp_path, broker):
    port = free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=6), source={"fps": 20, "loop": True},
                          metrics={"enabled": True, "port": port})
    daemon = DaemonProcess(config)
    try:
        assert daemon.wait_for_log("FAIL", 30), daemon.log()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    names = {s.name for s in samples}
    used = {name for query in dashboard_queries() for name in re.findall(r"\blineguard_[a-z0-9_]+", query)}
    assert used and used <= names, used - names
    for query in dashboard_queries():
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        for name, selector in re.findall(r"\b(lineguard_[a-z0-9_]+)\{([^}]*)\}", query):
            for label, value in re.findall(r'(\w+)=~?"([^"]*)"', selector):
                if label != "instance":  # Prometheus adds instance and job when it scrapes
                    assert any(s.name == name and s.labels.get(label) == value for s in samples), (name, label)
        for label in re.findall(r"by \(([^)]*)\)", query):
            for name in label.replace(" ", "").split(","):
                assert name in {"instance", "job"} or any(name in s.labels for s in samples), (query, name)
    panel_ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(set(panel_ids)) == len(panel_ids) and DASHBOARD["uid"]
