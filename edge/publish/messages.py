"""Every MQTT topic and payload the station publishes, and the `score` line: built here, in one place.

docs/mqtt-payloads.schema.json is the contract; tests check these builders against it. Home Assistant's discovery
configs, which live outside the station's topics, are built in edge.publish.discovery.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

RESULT = "result"
ALERT = "alert"
HEATMAP = "heatmap"
STATE = "state"
STATS = "stats"
REPLY = "reply"
STATUS = "status"  # retained `online` / `offline`, kept by the link (edge.publish.mqtt)
COMMAND = "cmd"  # commands arrive under <base>/cmd/<name>
REASON_COMMAND_MAX_CHARS = 64


@dataclass(frozen=True)
class Payload:
    """A message built once: ``data`` for whoever reads it in this process (do not change it), ``body`` the
    exact bytes published."""

    data: dict[str, Any]
    body: bytes


def base_topic(topic_prefix: str, device_id: str) -> str:
    """<base>, which every topic of the station starts with: ``<mqtt.topic_prefix>/<device_id>``."""
    return f"{topic_prefix}/{device_id}"


def topic(base: str, subtopic: str) -> str:
    """The full topic of a message under <base> (``result``, ``state``, ``cmd/...``)."""
    return f"{base}/{subtopic}"


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
                   latency_ms: float) -> Payload:
    """<base>/result (and <base>/alert): one verdict."""
    data = {
        "id": uuid.uuid4().hex, "seq": seq, "ts": utc_now(), "device_id": device_id,
        "image": image, "part_id": part_id, "score": result.score, "score_norm": round(result.score_norm, 6),
        "threshold": result.threshold, "verdict": result.verdict, "reason": result.reason,
        "regions": result.regions, "model": model_ref(bundle), "latency_ms": round(latency_ms, 3),
    }
    return Payload(data, to_json(data))


def heatmap_properties(result: dict[str, Any]) -> list[tuple[str, str]]:
    """MQTT 5 user properties of a <base>/heatmap JPEG: the `id` and `seq` of its result (``Payload.data``), and
    its verdict, so a dashboard matches picture and verdict (user property values are strings)."""
    return [("id", result["id"]), ("seq", str(result["seq"])), ("verdict", result["verdict"])]


def state_payload(source_state: str, detail: str, bundle, threshold: float, last_reload_error: str | None,
                  restart_required: list[str], threshold_dropped: dict | None = None) -> dict[str, Any]:
    """The retained <base>/state: source health, running model and threshold, reload outcome, and another
    model's stored threshold that the last start or reload dropped (edge.threshold_store)."""
    return {
        "source": source_state, "detail": detail, "model": model_ref(bundle), "threshold": threshold,
        "last_reload_error": last_reload_error, "restart_required": restart_required,
        "threshold_dropped": threshold_dropped, "ts": utc_now(),
    }


def stats_payload(device_id: str, bundle, threshold: float, status, *, source: dict, outbox: dict, last_seq: int,
                  delivered: int, evidence: dict, mqtt_connected: bool, sinks: dict,
                  triggers: dict | None = None, feedback: dict | None = None,
                  sections: dict | None = None, components: dict | None = None) -> dict[str, Any]:
    """<base>/stats: what the station has done since it started (``status``: edge.status.StationStatus) and how
    its parts fare; ``components`` the source, broker, outbox and model with their last errors (edge.components);
    ``sections`` are the sinks' own (drift, shadow). Also what /metrics and the station page's
    charts show."""
    c = status.counters
    uptime = status.uptime_s()
    p50, p95, p99 = status.latency_percentiles()
    return {
        "ts": utc_now(), "device_id": device_id, "uptime_s": round(uptime, 1),
        "frames": c.frames, "pass": c.passed, "fail": c.failed, "unscorable": c.unscorable,
        "alerts": c.alerts, "errors": c.errors, "dropped": source.get("dropped", 0),
        "fps": round(c.frames / uptime, 2) if uptime > 0 else 0.0,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
        "outbox": outbox, "last_seq": last_seq, "delivered": delivered,
        "source": source, "evidence": evidence, "sinks": sinks, "mqtt_connected": mqtt_connected,
        "model": model_ref(bundle), "threshold": threshold, "last_reload_error": status.last_reload_error,
        "restart_required": status.restart_required, "cpu_temp_c": status.cpu_temp_c(),
        "reloads": c.reloads, "reload_failures": c.reload_failures,
        "triggers": triggers or {}, "feedback": feedback or {}, "components": components or {},
        **(sections or {}),
    }


def drift_alert(device_id: str, bundle, report: dict[str, Any], seq: int) -> dict[str, Any]:
    """<base>/alert when the drift watch trips (edge.drift) with the verdict ``seq``: ``kind`` tells it from a
    failed part's alert."""
    return {"kind": "drift", "id": uuid.uuid4().hex, "ts": utc_now(), "device_id": device_id, "seq": seq, "drift": True,
            "reason": report["reason"], "signals": report["signals"], "model": model_ref(bundle)}


def reply_payload(command: str, ok: bool, reason: str, request_id: str | None,
                  seq: int | None = None, verdict: dict | None = None) -> dict[str, Any]:
    """<base>/reply: the answer to one command. A trigger's reply also carries the seq, verdict and score of its
    verdict (each null when none was made: busy, no frame in time, refused)."""
    reply = {"command": command[:REASON_COMMAND_MAX_CHARS], "ok": ok, "reason": reason, "request_id": request_id,
             "ts": utc_now()}
    if command == "trigger":
        reply["seq"] = seq
        reply["verdict"], reply["score"] = (verdict or {}).get("verdict"), (verdict or {}).get("score")
    return reply


def score_line(image: str, result) -> str:
    """One line of `lineguard score`, as strict JSON: the same figures a result payload carries."""
    line = {"image": image, "score": result.score, "score_norm": round(result.score_norm, 6),
            "threshold": result.threshold, "verdict": result.verdict, "regions": result.regions}
    if result.reason:
        line["reason"] = result.reason
    return to_json(line).decode()
