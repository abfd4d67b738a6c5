"""The link over MQTT 5 and 3.1.1 against a real Mosquitto: the broker's Receive Maximum is held to, the outbox
drains in order under it, and user properties go out over 5 only."""
from __future__ import annotations

import pytest

from edge.config.broker import MqttConfig
from edge.publish.mqtt import MqttLink
from edge.publish.outbox import Outbox
from edge.publish.sender import OutboxSender
from tests.support.helpers import wait_until
from tests.support.mqtt5 import Mqtt5Collector

BASE = "lg/dev1"
BROKER_RECEIVE_MAXIMUM = 5
MESSAGES = 300


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_outbox_drains_in_order_within_the_brokers_receive_maximum(tmp_path, make_broker, protocol):
    broker = make_broker(config_lines=[f"max_inflight_messages {BROKER_RECEIVE_MAXIMUM}"])
    subscriber = Mqtt5Collector(broker.host, broker.port, [f"{BASE}/result"])
    config = MqttConfig(host=broker.host, port=broker.port, protocol=protocol, max_inflight=256)
    link = MqttLink(config, BASE, client_id="lineguard-protocol-test")
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        for _ in range(MESSAGES):
            seq = outbox.next_seq()
            outbox.put(seq, [(f"{BASE}/result", b"%d" % seq, 1)])
        sender = OutboxSender(link, outbox, window=config.max_inflight)
        link.start()
        sender.start()
        try:
            assert link.wait_connected(10)
            # MQTT 5 brokers announce their limit (Mosquitto: max_inflight_messages); 3.1.1 has no such thing.
            assert link._client.max_inflight_messages == (BROKER_RECEIVE_MAXIMUM if protocol == "5" else 256)
            assert wait_until(lambda: outbox.depth() == 0, 30)
            assert subscriber.wait_for(lambda m: len(m) >= MESSAGES, 10)
        finally:
            sender.stop()
            link.stop(timeout_s=1.0)
            subscriber.close()
    assert [int(m.payload) for m in subscriber.messages] == list(range(1, MESSAGES + 1))


@pytest.mark.parametrize(("protocol", "expected"), [("5", {"seq": "7"}), ("3.1.1", {})])
def test_user_properties_go_out_over_mqtt5_only(broker, protocol, expected):
    subscriber = Mqtt5Collector(broker.host, broker.port, [f"{BASE}/heatmap"])
    link = MqttLink(MqttConfig(host=broker.host, port=broker.port, protocol=protocol), BASE, client_id="lg-props")
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.publish("heatmap", b"\xff\xd8jpeg", qos=1, user_properties=[("seq", "7")])
        assert subscriber.wait_for(lambda m: len(m) == 1, 10)
    finally:
        link.stop(timeout_s=1.0)
        subscriber.close()
    assert subscriber.messages[0].user_properties == expected


@pytest.mark.parametrize(("protocol", "kept"), [("5", 20), ("3.1.1", 0)])
def test_a_publish_the_brokers_acl_refuses_stays_in_the_outbox_over_mqtt5(tmp_path, make_broker, protocol, kept):
    acl = tmp_path / "acl"
    acl.write_text(f"topic write {BASE}/status\n")  # results are not allowed
    broker = make_broker(config_lines=[f"acl_file {acl}"])
    link = MqttLink(MqttConfig(host=broker.host, port=broker.port, protocol=protocol), BASE, client_id="lg-acl")
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        for _ in range(20):
            seq = outbox.next_seq()
            outbox.put(seq, [(f"{BASE}/result", b"%d" % seq, 1)])
        sender = OutboxSender(link, outbox)
        link.start()
        sender.start()
        try:
            # 5: "not authorized" for each, kept for a later try; 3.1.1: acknowledged as if delivered, and gone.
            assert wait_until(lambda: sender.refused == kept and outbox.depth() == kept, 15), (sender.refused,
                                                                                               outbox.depth())
            # What stats show as the broker's state: refusing over 5; over 3.1.1 nothing tells.
            refusal = sender.refusal()
            assert (refusal is not None and refusal.startswith(f"broker refused {kept} outbox message(s)")) \
                if kept else refusal is None
        finally:
            sender.stop()
            link.stop(timeout_s=1.0)
