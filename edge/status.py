"""What the station has done since it started, for the <base>/stats payload (edge.publish.messages) and the
journal."""
from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LATENCY_WINDOW = 2048  # verdicts whose latency the percentiles cover
# Upper bounds of the cumulative latency histogram (Prometheus buckets), in ms; one more bucket holds the rest.
LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)
CPU_TEMP_PATH = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass
class Counters:
    frames: int = 0
    passed: int = 0
    failed: int = 0
    alerts: int = 0
    errors: int = 0
    unscorable: int = 0  # frames the quality gate refused to judge
    reloads: int = 0  # reloads applied (SIGHUP or cmd/reload)
    reload_failures: int = 0  # reloads refused: the running config and model stayed


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
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # every verdict since start, not a window
        self.latency_sum_ms = 0.0
        self.started_s = time.monotonic()
        self.source_state = "starting"
        self.source_detail = ""
        self.last_reload_error: str | None = None
        self.restart_required: list[str] = []
        self.mask_dropped: dict | None = None  # another model's stored mask, not applied (edge.mask_store)
        self.threshold_dropped: dict | None = None  # another model's stored threshold, not applied (edge.startup)

    def count(self, verdict: str, latency_ms: float, alert: bool) -> None:
        counters = self.counters
        self.latencies_ms.append(latency_ms)
        self.latency_buckets[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms
        counters.frames += 1
        counters.failed += verdict == "fail"
        counters.passed += verdict == "pass"
        counters.unscorable += verdict == "unscorable"
        counters.alerts += alert

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_s

    def latency_percentiles(self) -> list[float | None]:
        """p50, p95 and p99 of the recent latencies (ms), from any thread; None each before the first verdict."""
        latencies = np.array(tuple(self.latencies_ms), dtype=float)  # one atomic copy: /metrics reads from its thread
        return np.percentile(latencies, [50, 95, 99]).round(3).tolist() if latencies.size else [None] * 3

    def cpu_temp_c(self) -> float | None:
        return cpu_temperature_c()
