"""Case 1, pipeline efficiency: frames/s of the whole daemon over frames/s of a bare invoke loop.

The daemon path is the real `lineguard run` process: folder replay (fps 0) -> preprocess -> invoke -> residual
map -> score -> JSON -> durable outbox -> MQTT QoS 1 to a local Mosquitto, counted when the PUBACK came back.
The reference is a bare `interpreter.invoke()` loop on the same int8 model with the same thread count. The two
alternate, so both see the same noise from other work on the machine, and the ratio is the median of the
ratios of adjacent pairs.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    DaemonRun, local_broker, log, median, percentile, rounded, run_daemon, run_json, scratch_dir, write_config,
)
from benchmarks.workloads import conv_bundle, fail_threshold, part_frames
from tests.support.broker import free_port

SIZE_PX = 256
GOAL = 0.90
FRAMES = {"full": 200, "quick": 150}
REPEATS = {"full": 5, "quick": 5}
THREADS = {"full": (1, 2), "quick": (1,)}
WARMUP_FRAMES = 10  # excluded from both rates: first invokes pack weights, first publishes open the session
FINISHED_PATTERN = re.compile(r"replay finished: (\d+) frames, (\d+) pass, (\d+) fail")


@dataclass
class Comparison:
    """Alternating daemon and bare-invoke runs at one model size and thread count."""

    size: int
    threads: int
    daemon_fps: list[float] = field(default_factory=list)
    bare_fps: list[float] = field(default_factory=list)
    daemon_median_fps: list[float] = field(default_factory=list)
    bare_median_fps: list[float] = field(default_factory=list)
    daemon_cpu_ms: list[float] = field(default_factory=list)
    bare_cpu_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    failed_fraction: float | None = None

    @property
    def ratios(self) -> list[float]:
        return [d / b for d, b in zip(self.daemon_fps, self.bare_fps)]

    def summary(self) -> dict:
        return {
            "size": self.size, "threads": self.threads,
            "efficiency": rounded(median(self.ratios)),
            "ratio_per_pair": [rounded(r) for r in self.ratios],
            "daemon_fps_median": rounded(median(self.daemon_fps), 2),
            "bare_invoke_fps_median": rounded(median(self.bare_fps), 2),
            "daemon_fps": [rounded(v, 2) for v in self.daemon_fps],
            "bare_invoke_fps": [rounded(v, 2) for v in self.bare_fps],
            "efficiency_median_interval": rounded(median(self.daemon_median_fps) / median(self.bare_median_fps)),
            "cpu_ms_per_frame": {"daemon": rounded(median(self.daemon_cpu_ms)),
                                 "bare_invoke": rounded(median(self.bare_cpu_ms))},
            "latency_ms_at_full_speed": {"p50": rounded(percentile(self.latencies_ms, 50)),
                                         "p99": rounded(percentile(self.latencies_ms, 99))},
            "failed_fraction": rounded(self.failed_fraction),
            "peak_rss_mb": rounded(max(self.peak_rss_mb, default=0), 1),
            "ready_s_median": rounded(median(self.ready_s)) if self.ready_s else None,
        }


def failed_fraction(run: DaemonRun) -> float | None:
    match = FINISHED_PATTERN.search(run.log_tail(20_000))
    return int(match.group(3)) / int(match.group(1)) if match and int(match.group(1)) else None


@dataclass(frozen=True)
class Bench:
    """What every pipeline case runs on: the conv bundle, its frames and a threshold, a local broker, a folder."""

    bundle: Path
    frames: Path
    threshold: float
    count: int
    repeats: int
    port: int
    work: Path


@contextmanager
def bench(name: str, mode: str) -> Iterator[Bench]:
    bundle = conv_bundle(SIZE_PX)
    count = FRAMES[mode]
    with scratch_dir(name) as work, local_broker(work) as broker:
        frames = part_frames(work / "frames", count, SIZE_PX)
        yield Bench(bundle, frames, fail_threshold(bundle, frames), count, REPEATS[mode], broker.port, work)


def compare(setup: Bench, threads: int, extra: dict | None = None, logs: list[str] | None = None) -> Comparison:
    """`repeats` pairs of (daemon run, bare loop), alternating which goes first."""
    bundle, frames, count, work = setup.bundle, setup.frames, setup.count, setup.work
    result = Comparison(size=int(bundle.name.split("-")[1]), threads=threads)
    sample_image = str(sorted(frames.glob("*.png"))[0])
    for repeat in range(setup.repeats):
        def daemon() -> None:
            storage = work / f"state-{bundle.name}-{threads}-{repeat}"
            config = write_config(work / f"config-{threads}-{repeat}.yaml", model=bundle, frames=frames,
                                  port=setup.port, storage=storage, threads=threads, threshold=setup.threshold,
                                  extra=extra)
            run = run_daemon(config, work)
            if run.delivered != count:
                raise RuntimeError(f"only {run.delivered} of {count} verdicts acknowledged:\n{run.log_tail()}")
            result.daemon_fps.append(run.steady_fps(WARMUP_FRAMES))
            result.daemon_median_fps.append(run.median_interval_fps(WARMUP_FRAMES))
            result.daemon_cpu_ms.append(run.cpu_ms_per_verdict())
            result.latencies_ms.extend(run.latencies_ms()[WARMUP_FRAMES:])
            result.peak_rss_mb.append(run.peak_rss_mb())
            if run.ready_s is not None:
                result.ready_s.append(run.ready_s)
            result.failed_fraction = failed_fraction(run)
            if logs is not None:
                logs.append(run.log_tail(20_000))

        def bare() -> None:
            reference = run_json("benchmarks.bare_invoke", bundle / "model.tflite", threads, count, WARMUP_FRAMES,
                                 sample_image)
            result.bare_fps.append(reference["fps"])
            result.bare_median_fps.append(reference["fps_median_interval"])
            result.bare_cpu_ms.append(reference["cpu_ms_per_invoke"])

        for step in ((daemon, bare) if repeat % 2 == 0 else (bare, daemon)):
            step()
        log("  %dx%d threads=%d pair %d: daemon %.1f fps, bare invoke %.1f fps, ratio %.3f", result.size,
            result.size, threads, repeat + 1, result.daemon_fps[-1], result.bare_fps[-1], result.ratios[-1])
    return result


def run(mode: str) -> dict:
    with bench("pipeline", mode) as setup:
        log("case 1: pipeline efficiency, %d frames of %dx%d, %d pairs per thread count", setup.count, SIZE_PX,
            SIZE_PX, setup.repeats)
        by_threads = {str(t): compare(setup, t).summary() for t in THREADS[mode]}
    headline = by_threads["1"]["efficiency"]
    results = {
        "pipeline_efficiency_256": headline,
        "pipeline_256": {
            "goal": GOAL, "met": headline is not None and headline >= GOAL, "mode": mode,
            "model": f"{setup.bundle.name} (conv AE, int8, uint8 in/out)", "frames": setup.count,
            "warmup_frames": WARMUP_FRAMES, "threshold": setup.threshold, "by_threads": by_threads,
        },
    }
    if "2" in by_threads:
        results["pipeline_efficiency_256_threads2"] = by_threads["2"]["efficiency"]
    return results


def plant_interfaces() -> dict:
    """Every plant interface on, on free loopback ports: OPC UA, Sparkplug B (its own MQTT session) and Modbus."""
    return {
        "opcua": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "sparkplug": {"enabled": True},
        "io": {"modbus": {"enabled": True, "host": "127.0.0.1", "port": free_port()}},
    }


def run_plant(mode: str) -> dict:
    """Case 10: case 1 at one thread with OPC UA, Sparkplug B and Modbus on (issue: plant scale keeps >= 0.90)."""
    with bench("pipeline-plant", mode) as setup:
        log("case 10: pipeline efficiency with OPC UA, Sparkplug B and Modbus on, %d frames, %d pairs",
            setup.count, setup.repeats)
        summary = compare(setup, 1, extra=plant_interfaces()).summary()
    return {
        "pipeline_efficiency_256_plant": summary["efficiency"],
        "pipeline_256_plant": {"goal": GOAL, "met": summary["efficiency"] is not None and summary["efficiency"] >= GOAL,
                               "mode": mode, "interfaces": "opcua, sparkplug, modbus", "threads": 1, **summary},
    }


SHADOW_GOAL = 0.85
SHADOW_PATTERN = re.compile(r"(\d+) frame\(s\) compared, (\d+) agreed, (\d+) disagreed, (\d+) skipped")


def run_shadow(mode: str) -> dict:
    """Case 11: case 1 at one thread with a shadow model (the same bundle) scoring beside the live one."""
    logs: list[str] = []
    with bench("pipeline-shadow", mode) as setup:
        log("case 11: pipeline efficiency with a shadow model, %d frames, %d pairs", setup.count, setup.repeats)
        summary = compare(setup, 1, extra={"shadow": {"model": str(setup.bundle)}}, logs=logs).summary()
    found = [tuple(int(v) for v in m.groups()) for m in map(SHADOW_PATTERN.search, logs) if m]
    compared, skipped = sum(f[0] for f in found), sum(f[3] for f in found)
    return {
        "pipeline_efficiency_256_shadow": summary["efficiency"],
        "pipeline_256_shadow": {
            "goal": SHADOW_GOAL, "met": summary["efficiency"] is not None and summary["efficiency"] >= SHADOW_GOAL,
            "mode": mode, "threads": 1, "shadow_compared": compared, "shadow_skipped": skipped,
            "shadow_disagreed": sum(f[2] for f in found), **summary},
    }
