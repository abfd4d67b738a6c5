"""Soak: the daemon for at least 10 minutes at 30 fps; RSS over time and latency percentiles.

    python -m benchmarks.soak                      # 11 minutes, 256x256 conv model, 30 fps (make soak)
    python -m benchmarks.soak --minutes 1 --model mnist-1

A benchmark, not a test: it writes benchmarks/results/soak.json and says whether RSS grew by at most 5 MB
after warm-up. RSS growth is the median RSS of the last minute minus the median RSS of the first minute after
warm-up, so single samples taken during a burst of allocation do not decide it. Frames are a looping folder
of synthetic parts (5 % with defects, so evidence and heatmaps are produced too) paced at --fps, published
at QoS 1 to a local Mosquitto through the durable outbox; the daemon is stopped with SIGTERM, as by systemd.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS_DIR, local_broker, log, machine, median, percentile, rounded, run_daemon, scratch_dir, write_config,
)
from edge.core.files import write_json_atomic
from benchmarks.workloads import MNIST_BUNDLE, conv_bundle, fail_threshold, mnist_frames, part_frames

SOAK_JSON = RESULTS_DIR / "soak.json"
DEFAULT_MINUTES = 11.0
DEFAULT_FPS = 30.0
WARMUP_S = 120.0  # start-up, first model invokes, outbox and evidence folder reaching steady size
WINDOW_S = 60.0  # RSS medians and latency percentiles are taken per minute
RSS_INTERVAL_S = 1.0
RSS_GROWTH_LIMIT_MB = 5.0
LOOP_FRAMES = 300
THREADS = 1


def rss_growth_mb(samples: list[tuple[float, int]], warmup_s: float) -> dict:
    """Median RSS of the first and last minute after warm-up, their difference and the peak, in MB."""
    steady = [(t, rss / 1e6) for t, rss in samples if t >= warmup_s]
    if not steady:
        return {"growth_mb": None}
    end_s = steady[-1][0]
    first = [rss for t, rss in steady if t < warmup_s + WINDOW_S]
    last = [rss for t, rss in steady if t >= end_s - WINDOW_S]
    return {
        "after_warmup_mb": rounded(median(first), 2), "at_end_mb": rounded(median(last), 2),
        "growth_mb": rounded(median(last) - median(first), 2), "peak_mb": rounded(max(r for _, r in steady), 2),
    }


def per_minute(run, samples: list[tuple[float, int]], spawn_s: float) -> list[dict]:
    """RSS and latency percentiles minute by minute, for the table in the report."""
    rows = []
    latencies = [(arrival - spawn_s, (done - arrival) * 1000.0)
                 for arrival, done in zip(run.arrival_s, run.acked_s) if done is not None]
    end_s = samples[-1][0] if samples else 0.0
    minute = 0
    while minute * WINDOW_S < end_s:
        low, high = minute * WINDOW_S, (minute + 1) * WINDOW_S
        rss = [r / 1e6 for t, r in samples if low <= t < high]
        window = [ms for t, ms in latencies if low <= t < high]
        rows.append({
            "minute": minute + 1, "rss_mb": rounded(median(rss), 2) if rss else None, "verdicts": len(window),
            "p50_ms": rounded(percentile(window, 50)), "p99_ms": rounded(percentile(window, 99)),
        })
        minute += 1
    return rows


def soak(minutes: float, fps: float, model: str) -> dict:
    duration_s = minutes * 60.0
    with scratch_dir("soak") as work, local_broker(work) as broker:
        if model == "mnist-1":
            bundle, frames, threshold = MNIST_BUNDLE, mnist_frames(work / "frames", LOOP_FRAMES), None
        else:
            bundle = conv_bundle(256)
            frames = part_frames(work / "frames", LOOP_FRAMES, 256)
            threshold = fail_threshold(bundle, frames)
        config = write_config(work / "config.yaml", model=bundle, frames=frames, port=broker.port,
                              storage=work / "state", fps=fps, threads=THREADS, threshold=threshold, loop=True)
        log("soak: %s at %.0f fps for %.1f minutes", bundle.name, fps, minutes)
        spawn_s = time.monotonic()
        run = run_daemon(config, work, stop_after_s=duration_s, timeout_s=duration_s + 120.0,
                         rss_interval_s=RSS_INTERVAL_S)
    steady = [(a, d) for a, d in zip(run.arrival_s, run.acked_s) if a - spawn_s >= WARMUP_S]
    latencies = [(d - a) * 1000.0 for a, d in steady if d is not None]
    arrivals = [a for a, _ in steady]
    rss = rss_growth_mb(run.rss_samples, WARMUP_S)
    growth = rss["growth_mb"]
    return {
        "model": bundle.name, "threads": THREADS, "fps_target": fps, "minutes": minutes, "warmup_s": WARMUP_S,
        "fps_achieved": rounded((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 2) if len(arrivals) > 1 else None,
        "verdicts": run.verdicts, "delivered": run.delivered,
        "latency_ms_after_warmup": {"p50": rounded(percentile(latencies, 50)), "p90": rounded(percentile(latencies, 90)),
                                    "p99": rounded(percentile(latencies, 99)), "max": rounded(max(latencies, default=0))},
        "rss": rss, "rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB,
        "rss_growth_ok": growth is not None and growth <= RSS_GROWTH_LIMIT_MB,
        "ready_s": rounded(run.ready_s), "cpu_ms_per_verdict": rounded(run.cpu_ms_per_verdict()),
        "per_minute": per_minute(run, run.rss_samples, spawn_s),
        "machine": machine(),
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="run time (default 11)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames per second (default 30)")
    parser.add_argument("--model", choices=("conv-256", "mnist-1"), default="conv-256")
    parser.add_argument("--out", default=str(SOAK_JSON), help="result file (default benchmarks/results/soak.json)")
    args = parser.parse_args(argv)
    result = soak(args.minutes, args.fps, args.model)
    write_json_atomic(Path(args.out), result)
    summary = {k: result[k] for k in ("model", "fps_achieved", "verdicts", "delivered", "latency_ms_after_warmup",
                                      "rss", "rss_growth_ok")}
    print(json.dumps(summary, indent=2))
    return 0 if result["rss_growth_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
