"""Home Assistant MQTT discovery: the retained config messages that make a station appear in Home Assistant as
one device, with "defect" and "drift" binary sensors, sensors (score, fail rate, fps, latency, outbox depth), the last
heatmap as an image, a trigger button and a threshold number.

Every entity reads a topic the station already publishes (result, stats, state, heatmap) or commands one it
already obeys (cmd/trigger, cmd/threshold, which takes the bare number Home Assistant sends); availability is the
retained status topic, `online` or `offline`. The configs are published, retained, on every connect and after a
reload (the threshold's range follows the model).
"""
from __future__ import annotations

import hashlib
import math
import re
from importlib import metadata
from typing import Any

from edge.publish import messages

COMPONENTS = ("binary_sensor", "sensor", "image", "button", "number")
THRESHOLD_MIN_STEP = 0.001  # Home Assistant refuses a number entity with a smaller step
THRESHOLD_STEP_DIGITS = 3  # the step is this many decades below the threshold: 21.69 moves by 0.01
_NOT_IN_TOPIC_ID = re.compile(r"[^A-Za-z0-9_-]")
_LOSSY = re.compile(r"[^A-Za-z0-9/-]")


def node_id(topic_prefix: str, device_id: str) -> str:
    """The station's id in discovery topics and unique_ids: its base topic with only [A-Za-z0-9_-].

    '/' becomes '_', which is unambiguous only while neither name holds a '_' or another character that also
    becomes one ('a/b' and 'a_b' would be one device in Home Assistant): then a short hash of the names follows.
    """
    readable = _NOT_IN_TOPIC_ID.sub("_", f"{topic_prefix}_{device_id}")
    if _LOSSY.search(topic_prefix) or _LOSSY.search(device_id):
        digest = hashlib.sha256(f"{topic_prefix}\0{device_id}".encode()).hexdigest()[:8]
        return f"{readable}_{digest}"
    return readable


def _version() -> str:
    try:
        return metadata.version("lineguard")
    except metadata.PackageNotFoundError:
        return "unknown"


def threshold_step(threshold: float) -> float:
    step = 10.0 ** (math.floor(math.log10(threshold)) - THRESHOLD_STEP_DIGITS + 1)
    return max(THRESHOLD_MIN_STEP, step)


def _entities(base: str, threshold: float, threshold_range: tuple[float, float]) -> dict[tuple[str, str], dict]:
    """(component, object id) -> the entity's own keys."""
    result, stats = messages.topic(base, messages.RESULT), messages.topic(base, messages.STATS)
    low, high = threshold_range
    return {
        ("binary_sensor", "defect"): {
            "name": "Defect", "state_topic": result, "device_class": "problem",
            # A part the quality gate could not judge is rejected too, as GPIO and Modbus treat it.
            "value_template": "{{ 'ON' if value_json.verdict in ('fail', 'unscorable') else 'OFF' }}",
            "json_attributes_topic": result,
            "json_attributes_template": "{{ {'seq': value_json.seq, 'part_id': value_json.part_id, "
                                        "'image': value_json.image, 'score': value_json.score} | tojson }}"},
        ("binary_sensor", "drift"): {
            "name": "Drift", "state_topic": stats, "device_class": "problem",
            "value_template": "{{ 'ON' if value_json.drift is defined and value_json.drift.drift else 'OFF' }}",
            "json_attributes_topic": stats,
            "json_attributes_template": "{{ {'reason': value_json.drift.reason if value_json.drift is defined "
                                        "else none} | tojson }}"},
        ("sensor", "score"): {
            "name": "Score", "state_topic": result, "value_template": "{{ value_json.score }}",
            "state_class": "measurement"},
        ("sensor", "fail_rate"): {
            "name": "Fail rate", "state_topic": stats, "unit_of_measurement": "%", "state_class": "measurement",
            "value_template": "{{ (100 * value_json.fail / value_json.frames) | round(2) "
                              "if value_json.frames else 0 }}"},
        ("sensor", "fps"): {
            "name": "Frame rate", "state_topic": stats, "value_template": "{{ value_json.fps }}",
            "unit_of_measurement": "fps", "state_class": "measurement"},
        ("sensor", "latency"): {
            "name": "Latency p50", "state_topic": stats, "value_template": "{{ value_json.latency_ms.p50 }}",
            "unit_of_measurement": "ms", "device_class": "duration", "state_class": "measurement"},
        ("sensor", "outbox_depth"): {
            "name": "Outbox depth", "state_topic": stats, "value_template": "{{ value_json.outbox.depth }}",
            "state_class": "measurement", "entity_category": "diagnostic"},
        ("image", "heatmap"): {
            "name": "Last heatmap", "image_topic": messages.topic(base, messages.HEATMAP),
            "content_type": "image/jpeg"},
        ("button", "trigger"): {
            "name": "Trigger", "command_topic": messages.topic(base, f"{messages.COMMAND}/trigger"),
            "payload_press": "{}", "qos": 1},
        ("number", "threshold"): {
            "name": "Threshold", "command_topic": messages.topic(base, f"{messages.COMMAND}/threshold"),
            "state_topic": messages.topic(base, messages.STATE),
            "value_template": "{{ value_json.threshold }}", "min": low, "max": high,
            "step": threshold_step(threshold), "mode": "box", "entity_category": "config", "qos": 1},
    }


def discovery_messages(discovery_prefix: str, topic_prefix: str, device_id: str, model_name: str,
                       threshold: float, threshold_range: tuple[float, float]) -> list[tuple[str, bytes]]:
    """(topic, payload) of every retained discovery config message for this station."""
    base = messages.base_topic(topic_prefix, device_id)
    node = node_id(topic_prefix, device_id)
    shared: dict[str, Any] = {
        "availability": [{"topic": messages.topic(base, messages.STATUS), "payload_available": "online",
                          "payload_not_available": "offline"}],
        "device": {"identifiers": [node], "name": device_id, "manufacturer": "lineguard",
                   "model": f"visual inspection ({model_name})", "sw_version": _version()},
        "origin": {"name": "lineguard", "sw_version": _version()},
    }
    found = []
    for (component, object_id), entity in _entities(base, threshold, threshold_range).items():
        payload = {**entity, "unique_id": f"{node}_{object_id}", **shared}
        found.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config", messages.to_json(payload)))
    return found
