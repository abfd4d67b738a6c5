"""`lineguard run` with a stopwatch: the unchanged daemon plus a sink that timestamps each verdict.

    python -m benchmarks.probe OUT.json run --config CONFIG [--max-frames N] [--drain-timeout S]

For every verdict (outbox seq) the probe records when its frame arrived, when it was durable in the outbox and
when the broker acknowledged it (the sender's delivery event). It watches through the daemon's sink
interface (edge.publish.sinks), like any other output. Timestamps come from time.monotonic(), which is shared
by all processes, so the benchmark can relate them to its own clock. The arrays are allocated up front: the
probe neither allocates per frame nor changes what the daemon does, so it does not disturb an RSS measurement.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from array import array

from edge.publish.sinks import VerdictEvent, VerdictSink

CAPACITY_ENV = "LINEGUARD_PROBE_CAPACITY"
DEFAULT_CAPACITY = 200_000  # verdicts; three float64 each, allocated before the daemon starts


class ProbeSink(VerdictSink):
    """Arrival, durable and acknowledgement time per verdict seq; CPU spent while inspecting."""

    name = "probe"
    inline = True  # two array stores per verdict: a thread of its own would cost more than it measures

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.arrival = array("d", [math.nan]) * capacity
        self.stored = array("d", [math.nan]) * capacity  # outbox.put returned: durable, ready to publish
        self.acked = array("d", [math.nan]) * capacity
        self.run_start_s = math.nan
        self.cpu_s = math.nan  # process CPU time (all threads) spent inspecting, start-up excluded
        self.thread_cpu_s: dict[str, float] = {}
        self._cpu_start_s = 0.0
        self._threads_start: dict[str, float] = {}

    def on_start(self) -> None:
        self.run_start_s = time.monotonic()
        self._cpu_start_s, self._threads_start = time.process_time(), thread_cpu_seconds()

    def on_verdict(self, event: VerdictEvent) -> None:
        if 0 <= event.seq < self.capacity:
            self.arrival[event.seq] = event.arrival_s
            self.stored[event.seq] = event.recorded_s

    def on_delivered(self, seqs: list[int], acked_s: float) -> None:
        for seq in seqs:
            if 0 <= seq < self.capacity:
                self.acked[seq] = acked_s

    def close(self) -> None:
        self.cpu_s = time.process_time() - self._cpu_start_s
        threads_end = thread_cpu_seconds()
        self.thread_cpu_s = {name: round(spent - self._threads_start.get(name, 0.0), 3)
                             for name, spent in threads_end.items()}

    def to_dict(self) -> dict:
        seqs = [s for s in range(self.capacity) if not math.isnan(self.arrival[s])]
        return {
            "run_start_s": self.run_start_s,
            "cpu_s": self.cpu_s,
            "thread_cpu_s": self.thread_cpu_s,
            "seq": seqs,
            "arrival_s": [self.arrival[s] for s in seqs],
            "stored_s": [self.stored[s] for s in seqs],
            "acked_s": [None if math.isnan(self.acked[s]) else self.acked[s] for s in seqs],
        }


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) per thread of this process, by Python thread name where there is one."""
    import threading

    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native")  # threads of the runtime or OpenCV
        spent[name] = spent.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return spent


def main() -> int:
    from edge.cli import build_parser
    from edge.daemon import run_from_config

    out_path, cli_args = sys.argv[1], sys.argv[2:]
    args = build_parser("run").parse_args(cli_args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    probe = ProbeSink(int(os.environ.get(CAPACITY_ENV, DEFAULT_CAPACITY)))
    code = run_from_config(args.config, max_frames=args.max_frames, drain_timeout_s=args.drain_timeout,
                           debug=args.verbose, sinks=[probe])
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(probe.to_dict(), out)
    return code


if __name__ == "__main__":
    sys.exit(main())
