"""Names the broker reads (topic prefixes, client id, user name): what a broker refuses is refused by the config,
with its line, and what the config takes is delivered by a real Mosquitto, up to the documented bounds."""
from __future__ import annotations

import json
import signal

import pytest

from edge.config.errors import ConfigError
from edge.config.fields import PREFIX_MAX_BYTES, PREFIX_MAX_LEVELS
from edge.config.load import parse_config
from edge.publish.discovery import node_id
from tests.support.broker import strict_json
from tests.support.daemon_harness import DEVICE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import run_cli

MINIMAL = "source:\n  path: frames\n"
EX_CONFIG = 78


def error_of(snippet: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + snippet + "\n")
    [error] = info.value.errors
    return error


@pytest.mark.parametrize(("snippet", "message"), [
    ("mqtt: {topic_prefix: '" + "p" * 70000 + "'}", "mqtt.topic_prefix: is 70000 bytes long; at most 1024"),
    ("mqtt: {topic_prefix: '$SYS/lg'}", "mqtt.topic_prefix: must not start with '$'"),
    ('mqtt: {topic_prefix: "plant\\x01lg"}', "mqtt.topic_prefix: must not contain the control character U+0001"),
    ('mqtt: {topic_prefix: "plant\\x85lg"}', "mqtt.topic_prefix: must not contain the control character U+0085"),
    ("mqtt: {topic_prefix: '" + "/".join(["a"] * 65) + "'}", "mqtt.topic_prefix: has 65 topic levels; at most 64"),
    ('homeassistant: {discovery_prefix: "home\\0assistant"}',
     "homeassistant.discovery_prefix: must not contain the control character U+0000"),
    ("homeassistant: {discovery_prefix: '$ha'}", "homeassistant.discovery_prefix: must not start with '$'"),
    ("homeassistant: {discovery_prefix: 'ha/#'}", "homeassistant.discovery_prefix: must not contain the wildcards"),
    ('mqtt: {client_id: "line\\x07"}', "mqtt.client_id: must not contain the control character U+0007"),
    ('mqtt: {username: "op\\x7f"}', "mqtt.username: must not contain the control character U+007F"),
])
def test_what_the_broker_would_refuse_is_a_config_error_with_its_line(snippet: str, message: str):
    assert error_of(snippet).startswith(f"config.yaml:3: {message}")


def test_check_config_refuses_a_broker_topic_before_the_station_runs(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"topic_prefix": "$SYS/lg"})
    checked = run_cli("check-config", config)
    assert checked.returncode == EX_CONFIG, checked.stderr
    assert "mqtt.topic_prefix: must not start with '$'" in checked.stderr and "Traceback" not in checked.stderr


def longest_prefix(stem: str) -> str:
    """A prefix at both bounds at once: PREFIX_MAX_LEVELS levels and PREFIX_MAX_BYTES bytes, with a non-ASCII level."""
    levels = [f"{stem}é"] + [stem] * (PREFIX_MAX_LEVELS - 1)
    text = "/".join(levels)
    padding = PREFIX_MAX_BYTES - len(text.encode("utf-8"))
    return text + "x" * padding


def test_prefixes_at_the_bounds_are_delivered_by_a_real_broker(tmp_path, broker, make_collector):
    prefix, discovery = longest_prefix("plant"), longest_prefix("ha")
    assert len(prefix.encode()) == PREFIX_MAX_BYTES and prefix.count("/") + 1 == PREFIX_MAX_LEVELS
    base = f"{prefix}/{DEVICE}"
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=3),
                          mqtt={"topic_prefix": prefix}, homeassistant={"enabled": True, "discovery_prefix": discovery})
    station = make_collector(broker, [f"{base}/#", f"{discovery}/#"])
    daemon = DaemonProcess(config)
    try:
        assert station.wait_for(lambda _: len(results(station, f"{base}/result")) == 3, 30), daemon.log()[-3000:]
        configs = [m for m in station.messages if m.topic.startswith(f"{discovery}/")]
        assert station.wait_for(lambda _: len([m for m in station.messages
                                               if m.topic.startswith(f"{discovery}/")]) >= 8, 10)
        for message in configs:
            assert strict_json(message.payload)["availability"][0]["topic"] == f"{base}/status"
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_home_assistant_ids_of_different_stations_never_collide():
    pairs = [(("a/b", "x"), ("a_b", "x")), (("a/b", "c"), ("a", "b_c")), (("plant", "cell.7"), ("plant", "cell_7")),
             (("a", "b"), ("a/b", "b"))]
    for first, second in pairs:
        assert node_id(*first) != node_id(*second), (first, second)
    # The names that map one to one keep their readable id, as before.
    assert node_id("lineguard", "cell-7") == "lineguard_cell-7"
    assert node_id("plant/hall-2", "cell-7") == "plant_hall-2_cell-7"
    assert json.dumps(node_id("a/b", "x")).isascii()
