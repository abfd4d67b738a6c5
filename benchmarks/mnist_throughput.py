"""Case 2, small-model throughput: the mnist-1 bundle end to end, QoS 1 through the durable outbox.

Verdicts/s counts verdicts whose outbox rows were deleted after the broker's PUBACK, from the end of a warm-up
to the last PUBACK. The frames are real MNIST digits: 1s (good parts) and, one frame in 20, a 9, which fails
and so also takes the alert, heatmap and evidence path. Every setting but the broker port and the state
folder is the shipped default (evidence and heatmaps of failed parts on, sync normal), except threads=1:
more interpreter threads only add hand-over cost to an 11 us model.
"""
from __future__ import annotations

from benchmarks.common import local_broker, log, median, percentile, rounded, run_daemon, scratch_dir, write_config
from benchmarks.pipeline import failed_fraction
from benchmarks.workloads import MNIST_BUNDLE, mnist_frames

GOAL_PER_S = 1000.0
FRAMES = 5000
REPEATS = 3
WARMUP_FRAMES = 200
THREADS = 1


def run() -> dict:
    rates, latencies, rss, ready, cpu_ms = [], [], [], [], []
    with scratch_dir("mnist") as work, local_broker(work) as broker:
        frames = mnist_frames(work / "frames", FRAMES)
        log("case 2: mnist-1 throughput, %d frames, %d runs", FRAMES, REPEATS)
        for repeat in range(REPEATS):
            config = write_config(work / f"config-{repeat}.yaml", model=MNIST_BUNDLE, frames=frames,
                                  port=broker.port, storage=work / f"state-{repeat}", threads=THREADS)
            run = run_daemon(config, work)
            if run.delivered != FRAMES:
                raise RuntimeError(f"only {run.delivered} of {FRAMES} verdicts acknowledged:\n{run.log_tail()}")
            rates.append(run.steady_fps(WARMUP_FRAMES))
            cpu_ms.append(run.cpu_ms_per_verdict())
            latencies.extend(run.latencies_ms()[WARMUP_FRAMES:])
            rss.append(run.peak_rss_mb())
            if run.ready_s is not None:
                ready.append(run.ready_s)
            fail_share = failed_fraction(run)
            log("  run %d: %.0f verdicts/s delivered, %.3f ms CPU per verdict %s", repeat + 1, rates[-1], cpu_ms[-1],
                run.thread_cpu_s)
    rate = median(rates)
    return {
        "mnist1_verdicts_per_s": rounded(rate, 1),
        "mnist1": {
            "goal_per_s": GOAL_PER_S, "met": rate >= GOAL_PER_S, "frames": FRAMES, "warmup_frames": WARMUP_FRAMES,
            "threads": THREADS, "runs_per_s": [rounded(r, 1) for r in rates],
            "cpu_ms_per_verdict": rounded(median(cpu_ms)), "failed_fraction": rounded(fail_share),
            "latency_ms_at_full_speed": {"p50": rounded(percentile(latencies, 50)),
                                         "p99": rounded(percentile(latencies, 99))},
            "peak_rss_mb": rounded(max(rss), 1), "ready_s_median": rounded(median(ready)) if ready else None,
        },
    }
