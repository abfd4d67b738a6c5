"""Shared pieces of the benchmarks: paths, the local broker, the daemon under measurement, statistics."""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
MODELS_DIR = BENCH_DIR / "models"  # trained benchmark bundles, cached between runs (not committed)
PYTHON = sys.executable

RSS_SAMPLE_INTERVAL_S = 0.25
READY_TIMEOUT_S = 60.0
DAEMON_TIMEOUT_S = 300.0
DEVICE_ID = "bench-1"
TOPIC_PREFIX = "lineguard"


def log(message: str, *args: object) -> None:
    """Progress on stderr, so stdout stays clean for JSON from helper processes."""
    print(time.strftime("%H:%M:%S ") + (message % args if args else message), file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"lineguard-{prefix}-") as path:
        yield Path(path)


@contextlib.contextmanager
def local_broker(workdir: Path) -> Iterator[object]:
    """Debian's mosquitto on a free loopback port, anonymous, no persistence."""
    sys.path.insert(0, str(ROOT))
    from tests.support.broker import MosquittoBroker

    broker = MosquittoBroker(workdir / "broker").start()
    try:
        yield broker
    finally:
        broker.stop()


def write_config(path: Path, *, model: Path, frames: Path, port: int, storage: Path, fps: float = 0.0,
                 threads: int = 1, threshold: float | None = None, loop: bool = False,
                 stats_interval_s: float = 10.0, drain_timeout_s: float = 60.0, web: dict | None = None,
                 extra: dict | None = None) -> Path:
    """A daemon config: folder replay into a local broker; every other setting keeps its default. ``extra`` adds
    whole sections (the plant interfaces a case turns on)."""
    config = {
        "device_id": DEVICE_ID,
        "model": str(model),
        "source": {"kind": "folder", "path": str(frames), "fps": fps, "loop": loop},
        "inference": {"threads": threads, "threshold": threshold},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": TOPIC_PREFIX,
                 "stats_interval_s": stats_interval_s},
        "storage": {"dir": str(storage), "drain_timeout_s": drain_timeout_s},
        "web": web or {"enabled": False},  # the station page only where a case measures it
        **(extra or {}),
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
    return path


@dataclass
class DaemonRun:
    """One `lineguard run` process, measured from outside (READY, RSS) and by the probe (per verdict)."""

    returncode: int
    ready_s: float | None  # process spawn -> READY=1 on NOTIFY_SOCKET
    arrival_s: list[float] = field(default_factory=list)  # per verdict, in seq order
    stored_s: list[float] = field(default_factory=list)
    acked_s: list[float | None] = field(default_factory=list)
    run_start_s: float = float("nan")
    cpu_s: float = float("nan")  # CPU seconds of the whole process during the run, start-up excluded
    thread_cpu_s: dict = field(default_factory=dict)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s since spawn, bytes)
    log_path: Path | None = None

    @property
    def verdicts(self) -> int:
        return len(self.arrival_s)

    @property
    def delivered(self) -> int:
        return sum(1 for t in self.acked_s if t is not None)

    def steady_fps(self, warmup: int) -> float:
        """Verdicts per second acknowledged after the first `warmup` ones, up to the last PUBACK."""
        acked = sorted(t for t in self.acked_s if t is not None)
        if len(acked) <= warmup + 1:
            return float("nan")
        return (len(acked) - warmup) / (acked[-1] - acked[warmup - 1] if warmup else acked[-1] - self.run_start_s)

    def latencies_ms(self) -> list[float]:
        """Frame arrival -> PUBACK, per delivered verdict."""
        return [(done - start) * 1000.0 for start, done in zip(self.arrival_s, self.acked_s) if done is not None]

    def median_interval_fps(self, warmup: int) -> float:
        """1 / the median time between frames handed to the inspector: the main loop's pace without the
        bursts of other work on the machine, which a median ignores."""
        arrivals = self.arrival_s[warmup:]
        intervals = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
        return 1.0 / intervals[len(intervals) // 2] if intervals else float("nan")

    def cpu_ms_per_verdict(self) -> float:
        return self.cpu_s / self.verdicts * 1000.0 if self.verdicts else float("nan")

    def stage_latencies_ms(self) -> tuple[list[float], list[float]]:
        """(arrival -> stored in the outbox, stored -> PUBACK) per delivered verdict: inspection and delivery."""
        stages = [((stored - start) * 1000.0, (done - stored) * 1000.0)
                  for start, stored, done in zip(self.arrival_s, self.stored_s, self.acked_s) if done is not None]
        return [s[0] for s in stages], [s[1] for s in stages]

    def peak_rss_mb(self) -> float:
        return max((rss for _, rss in self.rss_samples), default=0) / 1e6

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: records when READY=1 arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            if self.ready_at is None and b"READY=1" in data.split(b"\n"):
                self.ready_at = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def sample_rss(process: subprocess.Popen, started_s: float, samples: list, interval_s: float) -> None:
    while process.poll() is None:
        rss = rss_bytes(process.pid)
        if rss is not None:
            samples.append((time.monotonic() - started_s, rss))
        time.sleep(interval_s)


# Measured processes start in a session of their own: with the kernel's autogroup scheduling, as under
# systemd's per-unit cgroups, each then gets its own share of the CPUs, and the broker's and this runner's
# work is not charged to the daemon.


def run_daemon(config: Path, workdir: Path, *, probe: bool = True, timeout_s: float = DAEMON_TIMEOUT_S,
               rss_interval_s: float = RSS_SAMPLE_INTERVAL_S, stop_after_s: float | None = None,
               extra_env: dict | None = None) -> DaemonRun:
    """Run `lineguard run --config CONFIG` to its end (a finite replay, or SIGTERM after stop_after_s)."""
    stamp = time.monotonic_ns()
    probe_path, log_path = workdir / f"probe-{stamp}.json", workdir / f"daemon-{stamp}.log"
    notify = NotifyListener(workdir / f"notify-{stamp}.sock")
    launcher = ["-m", "benchmarks.probe", str(probe_path)] if probe else ["-m", "edge.cli"]
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("WATCHDOG_USEC", None)
    samples: list[tuple[float, int]] = []
    try:
        with open(log_path, "wb") as log_file:
            started_s = time.monotonic()
            process = subprocess.Popen([PYTHON, *launcher, "run", "--config", str(config)], cwd=ROOT,
                                       stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            sampler = threading.Thread(target=sample_rss, args=(process, started_s, samples, rss_interval_s),
                                       daemon=True)
            sampler.start()
            try:
                if stop_after_s is not None:
                    stop_later(process, stop_after_s)
                returncode = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise RuntimeError(f"daemon did not finish within {timeout_s:.0f} s; log: {log_path}") from None
            sampler.join(1.0)
    finally:
        notify.close()
    run = DaemonRun(returncode=returncode, ready_s=None if notify.ready_at is None else notify.ready_at - started_s,
                    rss_samples=samples, log_path=log_path)
    if returncode != 0:
        raise RuntimeError(f"daemon exited with {returncode}:\n{run.log_tail()}")
    if probe:
        data = json.loads(probe_path.read_text())
        run.run_start_s, run.arrival_s, run.acked_s = data["run_start_s"], data["arrival_s"], data["acked_s"]
        run.cpu_s, run.thread_cpu_s, run.stored_s = data["cpu_s"], data["thread_cpu_s"], data["stored_s"]
    return run


def stop_later(process: subprocess.Popen, after_s: float) -> None:
    """SIGTERM the process after after_s, as systemd stops the service."""
    try:
        process.wait(after_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)


def run_json(module: str, *args: str, timeout_s: float = 300.0, env: dict | None = None) -> dict:
    """Run `python -m MODULE ARGS` and parse the JSON it prints last on stdout."""
    out = subprocess.run([PYTHON, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout_s, env={**os.environ, **(env or {})}, start_new_session=True)
    if out.returncode != 0:
        raise RuntimeError(f"{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values)


def rounded(value: float | None, digits: int = 3) -> float | None:
    """A figure for the results: None (null in JSON) when there is none or it is undefined (NaN), since the
    results are strict JSON."""
    return None if value is None or not math.isfinite(value) else round(value, digits)


def machine() -> dict:
    """What the figures were measured on: CPU model, cores, load, versions."""
    model, flags = "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        info = {}
        for line in cpuinfo:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        model = info.get("model name", model)
        flags = set(info.get("flags", "").split())
        family, cpu_model = info.get("cpu family"), info.get("model")
    from importlib.metadata import version

    return {
        "cpu_model_name": model,
        "cpu_family_model": f"{family}/{cpu_model}" if flags else None,
        "cpu_mhz_nominal": _cpu_mhz(),
        "cores": os.cpu_count(),
        "simd": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "ai_edge_litert": version("ai-edge-litert"),
        "paho_mqtt": version("paho-mqtt"),
        "opencv": version("opencv-python-headless"),
        "numpy": version("numpy"),
    }


def _cpu_mhz() -> float | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]), 0)
    return None
