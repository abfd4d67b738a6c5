"""Every MQTT topic and payload the station publishes, and the `score` line: built here, in one place.

docs/mqtt-payloads.schema.json is the contract; tests check these builders against it. Home Assistant's discovery
configs, which live outside the station's topics, are built in edge.publish.discovery.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

RESULT = "result"
ALERT = "alert"
HEATMAP = "heatmap"
STATE = "state"
STATS = "stats"
REPLY = "reply"
REASON_COMMAND_MAX_CHARS = 64


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(data: dict[str, Any]) -> bytes:
    """Compact, strict JSON: NaN and Infinity are not JSON, and dashboards' parsers (JavaScript, Node-RED)
    refuse them, so a non-finite number raises ValueError here instead of going out."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def model_ref(bundle) -> dict[str, str]:
    """Which model judged: its name and the sha256 of its model file."""
    return {"name": bundle.name, "sha256": bundle.model_sha256}


def result_payload(seq: int, device_id: str, image: str, part_id: str | None, result, bundle,
                   latency_ms: float) -> bytes:
    """<base>/result (and <base>/alert): one verdict."""
    return to_json({
        "id": uuid.uuid4().hex, "seq": seq, "ts": utc_now(), "device_id": device_id,
        "image": image, "part_id": part_id, "score": result.score, "score_norm": round(result.score_norm, 6),
        "threshold": result.threshold, "verdict": result.verdict, "reason": result.reason,
        "regions": result.regions, "model": model_ref(bundle), "latency_ms": round(latency_ms, 3),
    })


def heatmap_properties(seq: int, result_payload: bytes) -> list[tuple[str, str]]:
    """MQTT 5 user properties of a <base>/heatmap JPEG: the `id` and `seq` of its result, and its verdict, so a
    dashboard matches picture and verdict (user property values are strings)."""
    result = json.loads(result_payload)
    return [("id", result["id"]), ("seq", str(seq)), ("verdict", result["verdict"])]


def state_payload(source_state: str, detail: str, bundle, threshold: float, last_reload_error: str | None,
                  restart_required: list[str]) -> dict[str, Any]:
    """The retained <base>/state: source health, running model and threshold, reload outcome."""
    return {
        "source": source_state, "detail": detail, "model": model_ref(bundle), "threshold": threshold,
        "last_reload_error": last_reload_error, "restart_required": restart_required, "ts": utc_now(),
    }


def reply_payload(command: str, ok: bool, reason: str, request_id: str | None,
                  seq: int | None = None) -> dict[str, Any]:
    """<base>/reply: the answer to one command. A trigger's reply also carries the seq of its verdict (null when
    none was made: busy, no frame in time, refused)."""
    reply = {"command": command[:REASON_COMMAND_MAX_CHARS], "ok": ok, "reason": reason, "request_id": request_id,
             "ts": utc_now()}
    if command == "trigger":
        reply["seq"] = seq
    return reply


def score_line(image: str, result) -> str:
    """One line of `lineguard score`, as strict JSON: the same figures a result payload carries."""
    line = {"image": image, "score": result.score, "score_norm": round(result.score_norm, 6),
            "threshold": result.threshold, "verdict": result.verdict, "regions": result.regions}
    if result.reason:
        line["reason"] = result.reason
    return to_json(line).decode()
