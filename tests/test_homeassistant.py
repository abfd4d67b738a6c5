"""Home Assistant MQTT discovery, through a real Mosquitto from the real daemon: every retained config message
passes Home Assistant's discovery rules, names topics the daemon really publishes or obeys, and its templates
render the daemon's real payloads as Home Assistant would (Jinja2, value_json)."""
from __future__ import annotations

import json
import signal

import jinja2
import jsonschema
import pytest

from edge.config.errors import ConfigError
from edge.config.load import parse_config
from edge.publish.discovery import discovery_messages
from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.ha_discovery import TOPIC_KEYS, TOPIC_PATTERN, schema_for

DISCOVERY = "ha-test"
EXPECTED = {("binary_sensor", "defect"), ("binary_sensor", "drift"), ("sensor", "score"), ("sensor", "fail_rate"), ("sensor", "fps"),
            ("sensor", "latency"), ("sensor", "outbox_depth"), ("image", "heatmap"), ("button", "trigger"),
            ("number", "threshold")}


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it for an MQTT message."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return environment.from_string(template).render(value=payload.decode(), value_json=json.loads(payload))


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_discovery_configs_pass_home_assistants_rules_and_name_real_topics(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=6)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 10, "loop": True},
                          mqtt={"heatmap": "always"}, homeassistant={"enabled": True, "discovery_prefix": DISCOVERY})
    station = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    try:
        published = lambda topic: any(m.topic == topic for m in station.messages)  # noqa: E731
        assert station.wait_for(lambda _: published(f"{BASE}/stats") and published(f"{BASE}/alert"), 30), \
            daemon.log()[-3000:]
        # Home Assistant subscribes when it starts, maybe long after the station: the configs are retained.
        home_assistant = make_collector(broker, [f"{DISCOVERY}/#"])
        assert home_assistant.wait_for(len(EXPECTED), 10)
        configs = {}
        for message in home_assistant.messages:
            match = TOPIC_PATTERN.match(message.topic)
            assert match and match["prefix"] == DISCOVERY and message.retain, message.topic
            payload = strict_json(message.payload)
            jsonschema.validate(payload, schema_for(match["component"]))
            configs[(match["component"], match["object_id"])] = payload
        assert set(configs) == EXPECTED
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        assert len({json.dumps(c["device"], sort_keys=True) for c in configs.values()}) == 1  # one device

        for (component, object_id), payload in configs.items():
            assert payload["availability"] == [{"topic": f"{BASE}/status", "payload_available": "online",
                                                "payload_not_available": "offline"}]
            for key in TOPIC_KEYS:
                if key in payload and key != "command_topic":
                    assert published(payload[key]), f"{component}.{object_id}: {key} {payload[key]} never published"
            last = lambda topic: [m.payload for m in station.messages if m.topic == topic][-1]  # noqa: E731
            if "value_template" in payload:
                rendered = render(payload["value_template"], last(payload["state_topic"]))
                expected_values = {"ON", "OFF"} if component == "binary_sensor" else None
                assert rendered in expected_values if expected_values else (is_number(rendered) or rendered == "None")
            if "json_attributes_template" in payload:
                attributes = json.loads(render(payload["json_attributes_template"], last(payload["json_attributes_topic"])))
                assert set(attributes) == ({"reason"} if object_id == "drift" else {"seq", "part_id", "image", "score"})
        assert render(configs[("sensor", "fail_rate")]["value_template"], last(f"{BASE}/stats")) != "0"
        number = configs[("number", "threshold")]
        current = float(render(number["value_template"], last(f"{BASE}/state")))
        assert number["min"] < current < number["max"]

        # What Home Assistant sends: the button's payload_press, the number's value as text.
        station.publish(configs[("button", "trigger")]["command_topic"], configs[("button", "trigger")]["payload_press"])
        wanted = round(current * 1.5, 2)
        station.publish(number["command_topic"], str(wanted))
        replies = lambda: station.json_payloads(f"{BASE}/reply")  # noqa: E731
        assert station.wait_for(lambda _: len(replies()) >= 2, 15), daemon.log()[-2000:]
        assert {r["command"]: r["ok"] for r in replies()} == {"trigger": True, "threshold": True}, replies()
        assert station.wait_for(lambda _: float(render(number["value_template"], last(f"{BASE}/state"))) == wanted, 10)
        assert station.json_payloads(f"{BASE}/result")[-1]["threshold"] in (current, wanted)
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    # What "payload_not_available" says (the subscriber may still be receiving it).
    assert station.wait_for(lambda _: station.payloads(f"{BASE}/status")[-1:] == [b"offline"], 10)


def test_no_discovery_unless_enabled(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=3))
    home_assistant = make_collector(broker, ["homeassistant/#"])
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    assert home_assistant.messages == []


def test_discovery_without_mqtt_is_a_config_error_with_its_line(tmp_path):
    text = "source:\n  kind: folder\n  path: .\nmqtt:\n  enabled: false\nhomeassistant:\n  enabled: true\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "config.yaml", tmp_path)
    assert "config.yaml:6: homeassistant: enabled needs mqtt.enabled" in str(refused.value)


def test_the_defect_sensor_reads_on_for_a_failed_and_an_unscorable_part():
    """GPIO and Modbus reject an unscorable part; Home Assistant's defect sensor says the same."""
    [defect] = [payload for topic, payload in discovery_messages("homeassistant", "lineguard", "cell-7", "mnist-1",
                                                                   25.0, (0.25, 1369.0))
                if topic.startswith("homeassistant/binary_sensor/") and topic.endswith("/defect/config")]
    template = json.loads(defect)["value_template"]
    rendered = {verdict: render(template, json.dumps({"verdict": verdict}).encode())
                for verdict in ("pass", "fail", "unscorable")}
    assert rendered == {"pass": "OFF", "fail": "ON", "unscorable": "ON"}
