"""Every JSON payload the daemon publishes matches the documented schema in docs/."""
from __future__ import annotations

import json
import signal

import jsonschema
import pytest

from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import ROOT

SCHEMA = json.loads((ROOT / "docs" / "mqtt-payloads.schema.json").read_text())


def validate(kind: str, payload: dict) -> None:
    jsonschema.validate(payload, {**SCHEMA, "$ref": f"#/$defs/{kind}"})


def test_published_payloads_match_the_schema(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=6)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 10, "loop": True})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: any(x.topic == f"{BASE}/alert" for x in m), 30), daemon.log()[-2000:]
    collector.publish(f"{BASE}/cmd/threshold", b'{"threshold": 30.0, "request_id": "a"}')
    collector.publish(f"{BASE}/cmd/threshold", b'{"threshold": "x"}')
    collector.publish(f"{BASE}/cmd/trigger", b'{"request_id": "t"}')
    assert collector.wait_for(lambda m: sum(x.topic == f"{BASE}/reply" for x in m) >= 3, 15)
    assert collector.wait_for(lambda m: any(x.topic == f"{BASE}/stats" for x in m), 15)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    kinds = {"result": "result", "alert": "alert", "stats": "stats", "reply": "reply", "state": "state"}
    seen = set()
    for message in collector.messages:
        sub = message.topic[len(BASE) + 1:]
        if sub in kinds:
            validate(kinds[sub], strict_json(message.payload))
            seen.add(sub)
        elif sub.startswith("cmd/"):
            continue  # our own commands, echoed back by the wildcard subscription
        elif sub == "status":
            assert message.payload in (b"online", b"offline")  # what Home Assistant's availability takes
        else:
            assert sub == "heatmap" and message.payload[:2] == b"\xff\xd8"  # JPEG
    assert {"result", "alert", "stats", "reply"} <= seen
    replies = [strict_json(p) for p in collector.payloads(f"{BASE}/reply")]
    [trigger_reply] = [r for r in replies if r["request_id"] == "t"]
    seqs = {strict_json(p)["seq"] for p in collector.payloads(f"{BASE}/result")}
    assert trigger_reply["ok"] is True and trigger_reply["seq"] in seqs
    [inspected] = [strict_json(p) for p in collector.payloads(f"{BASE}/result")
                   if strict_json(p)["seq"] == trigger_reply["seq"]][:1]
    assert (trigger_reply["verdict"], trigger_reply["score"]) == (inspected["verdict"], inspected["score"])
    assert all("seq" not in r for r in replies if r["command"] != "trigger")


def test_a_trigger_reply_must_carry_its_seq():
    reply = {"command": "trigger", "ok": True, "reason": "inspected as seq 4", "request_id": None, "ts": "t", "seq": 4,
             "verdict": "fail", "score": 31.5}
    validate("reply", reply)
    validate("reply", {**reply, "ok": False, "seq": None, "verdict": None, "score": None})
    for broken in ({k: v for k, v in reply.items() if k != "seq"}, {**reply, "seq": "4"},
                   {k: v for k, v in reply.items() if k != "verdict"}, {**reply, "verdict": "FAIL"}):
        with pytest.raises(jsonschema.ValidationError):
            validate("reply", broken)


def test_command_examples_match_the_schema():
    validate("command_trigger", {"part_id": "P-17"})
    validate("command_threshold", {"threshold": 21.5, "request_id": "r1"})
    validate("command_threshold", 0.42)  # a slider's bare number
    validate("command_reload", {})
    validate("command_shadow", {"model": "/opt/lineguard/models/next", "request_id": "r2"})
    validate("command_shadow", {"stop": True})
    for broken in ({}, {"stop": False}, {"model": "m", "stop": True}, {"model": ""}):
        with pytest.raises(jsonschema.ValidationError):
            validate("command_shadow", broken)
