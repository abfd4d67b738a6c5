"""What the station has done since it started, for the <base>/stats payload and the journal."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.publish.messages import model_ref, utc_now

LATENCY_WINDOW = 2048  # verdicts whose latency the percentiles cover
CPU_TEMP_PATH = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass
class Counters:
    frames: int = 0
    passed: int = 0
    failed: int = 0
    alerts: int = 0
    errors: int = 0
    unscorable: int = 0  # frames the quality gate refused to judge


def cpu_temperature_c() -> float | None:
    try:
        return int(CPU_TEMP_PATH.read_text()) / 1000.0
    except (OSError, ValueError):
        return None


class StationStatus:
    """Counters, latencies, source health and the last reload's outcome."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.started_s = time.monotonic()
        self.source_state = "starting"
        self.source_detail = ""
        self.last_reload_error: str | None = None
        self.restart_required: list[str] = []

    def count(self, verdict: str, latency_ms: float, alert: bool) -> None:
        counters = self.counters
        self.latencies_ms.append(latency_ms)
        counters.frames += 1
        counters.failed += verdict == "fail"
        counters.passed += verdict == "pass"
        counters.unscorable += verdict == "unscorable"
        counters.alerts += alert

    def stats_payload(self, device_id: str, bundle, threshold: float, *, source: dict, outbox: dict,
                      last_seq: int, delivered: int, evidence: dict, mqtt_connected: bool, sinks: dict,
                      triggers: dict | None = None) -> dict:
        latencies = np.fromiter(self.latencies_ms, dtype=float)
        uptime = time.monotonic() - self.started_s
        p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]).round(3).tolist() if latencies.size else [None] * 3)
        c = self.counters
        return {
            "ts": utc_now(), "device_id": device_id, "uptime_s": round(uptime, 1),
            "frames": c.frames, "pass": c.passed, "fail": c.failed, "unscorable": c.unscorable,
            "alerts": c.alerts, "errors": c.errors, "dropped": source.get("dropped", 0),
            "fps": round(c.frames / uptime, 2) if uptime > 0 else 0.0,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "outbox": outbox, "last_seq": last_seq, "delivered": delivered,
            "source": source, "evidence": evidence, "sinks": sinks, "mqtt_connected": mqtt_connected,
            "model": model_ref(bundle), "threshold": threshold, "last_reload_error": self.last_reload_error,
            "restart_required": self.restart_required, "cpu_temp_c": cpu_temperature_c(),
            "triggers": triggers or {},
        }
