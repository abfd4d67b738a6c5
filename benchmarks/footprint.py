"""Case 4, latency, footprint and scaling.

* Latency from frame arrival to PUBACK, p50 and p99, at a line's pace (paced replay) and at full speed.
* Daemon RSS (peak and median while inspecting) and the time from process start to READY=1 on an injected
  NOTIFY_SOCKET, as systemd would see it.
* Installed size of the `edge` extra against the `train` extra: the files listed in the RECORD of every
  distribution each extra pulls in, from this venv's metadata (nothing is downloaded).
* Scaling with image size (128, 256, 512) and interpreter threads (1, 2): daemon and bare invoke fps.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks.common import local_broker, log, median, percentile, rounded, run_daemon, scratch_dir, write_config
from benchmarks.pipeline import Bench, compare
from benchmarks.workloads import MNIST_BUNDLE, conv_bundle, fail_threshold, mnist_frames, part_frames

PACED = (  # (label, model, fps, frames)
    ("conv-256 at 20 fps", "conv-256", 20.0, 200),
    ("mnist-1 at 30 fps", "mnist-1", 30.0, 300),
)
SCALING_SIZES = (128, 256, 512)
SCALING_THREADS = (1, 2)
SCALING_FRAMES = {128: 200, 256: 120, 512: 60}
PROJECT = "lineguard"


def paced_runs(work: Path, port: int) -> dict:
    results = {}
    for label, model, fps, count in PACED:
        if model == "mnist-1":
            bundle, frames, threshold = MNIST_BUNDLE, mnist_frames(work / f"frames-{model}", count), None
        else:
            bundle = conv_bundle(256)
            frames = part_frames(work / f"frames-{model}", count, 256)
            threshold = fail_threshold(bundle, frames)
        config = write_config(work / f"config-{model}.yaml", model=bundle, frames=frames, port=port,
                              storage=work / f"state-paced-{model}", fps=fps, threads=1, threshold=threshold)
        run = run_daemon(config, work)
        latencies = run.latencies_ms()[10:]
        inspection, delivery = (stage[10:] for stage in run.stage_latencies_ms())
        steady_rss = [rss for t, rss in run.rss_samples if run.ready_s is not None and t > run.ready_s]
        results[label] = {
            "latency_ms": {"p50": rounded(percentile(latencies, 50)), "p99": rounded(percentile(latencies, 99))},
            "arrival_to_outbox_ms": {"p50": rounded(percentile(inspection, 50)),
                                     "p99": rounded(percentile(inspection, 99))},
            "outbox_to_puback_ms": {"p50": rounded(percentile(delivery, 50)), "p99": rounded(percentile(delivery, 99))},
            "delivered": run.delivered, "frames": count, "ready_s": rounded(run.ready_s),
            "rss_mb_median": rounded(median(steady_rss) / 1e6, 1) if steady_rss else None,
            "rss_mb_peak": rounded(run.peak_rss_mb(), 1),
        }
        log("  %s: p50 %.1f ms, p99 %.1f ms, RSS %.0f MB, READY after %.2f s", label,
            results[label]["latency_ms"]["p50"], results[label]["latency_ms"]["p99"], run.peak_rss_mb(),
            run.ready_s or float("nan"))
    return results


def requirement_closure(extra: str) -> set[str]:
    """Distributions installed for `lineguard[extra]`, the project itself excluded."""
    seen: dict[str, set[str]] = {}
    todo = [(canonicalize_name(PROJECT), {extra})]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        environments = [{"extra": e} for e in extras] or [{"extra": ""}]
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                todo.append((canonicalize_name(requirement.name), set(requirement.extras)))
    seen.pop(canonicalize_name(PROJECT), None)
    return set(seen)


def installed_bytes(name: str) -> int:
    total = 0
    for record in metadata.distribution(name).files or []:
        try:
            total += record.locate().stat().st_size
        except OSError:
            continue
    return total


def installed_sizes() -> dict:
    result = {}
    for extra in ("edge", "train"):
        sizes = {name: installed_bytes(name) for name in requirement_closure(extra)}
        largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:6]
        result[extra] = {"distributions": len(sizes), "mb": rounded(sum(sizes.values()) / 1e6, 1),
                         "largest_mb": {name: rounded(size / 1e6, 1) for name, size in largest}}
    result["train_over_edge"] = rounded(result["train"]["mb"] / result["edge"]["mb"], 1)
    return result


def scaling(work: Path, port: int, earlier: dict) -> dict:
    """Daemon and bare-invoke fps by size and threads; 256 comes from case 1 of this run when present."""
    table = {}
    case1 = (earlier.get("pipeline_256") or {}).get("by_threads", {}) if earlier.get("pipeline_256", {}).get(
        "mode") == "full" else {}
    for size in SCALING_SIZES:
        bundle = conv_bundle(size)
        frames = part_frames(work / f"frames-{size}", SCALING_FRAMES[size], size)
        threshold = fail_threshold(bundle, frames)
        for threads in SCALING_THREADS:
            key = f"{size}x{size} threads={threads}"
            if size == 256 and str(threads) in case1:
                summary = case1[str(threads)]
            else:
                summary = compare(Bench(bundle, frames, threshold, SCALING_FRAMES[size], 1, port, work),
                                  threads).summary()
            table[key] = {"daemon_fps": summary["daemon_fps_median"], "bare_invoke_fps": summary["bare_invoke_fps_median"],
                          "efficiency": summary["efficiency"], "cpu_ms_per_frame": summary.get("cpu_ms_per_frame"),
                          "peak_rss_mb": summary["peak_rss_mb"]}
    return table


def run(earlier: dict) -> dict:
    log("case 4: latency, footprint and scaling")
    with scratch_dir("footprint") as work, local_broker(work) as broker:
        paced = paced_runs(work, broker.port)
        sizes = scaling(work, broker.port, earlier)
    readies = [v["ready_s"] for v in paced.values() if v["ready_s"] is not None]
    return {"footprint": {
        "paced": paced, "ready_s_median": rounded(median(readies)) if readies else None,
        "installed": installed_sizes(), "scaling": sizes,
    }}
