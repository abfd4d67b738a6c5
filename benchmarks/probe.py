"""`lineguard run` with a stopwatch: the unchanged daemon plus a probe that timestamps each verdict.

    python -m benchmarks.probe OUT.json run --config CONFIG

For every verdict (outbox seq) the probe records when its frame arrived and when its outbox rows were
acknowledged, i.e. when the sender deletes them after the broker's PUBACK. Timestamps come from
time.monotonic(), which is shared by all processes, so the benchmark can relate them to its own clock.
The arrays are allocated up front: the probe neither allocates per frame nor changes what the daemon does,
so it does not disturb an RSS measurement either.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from array import array

CAPACITY_ENV = "LINEGUARD_PROBE_CAPACITY"
DEFAULT_CAPACITY = 200_000  # verdicts; two float64 each, allocated before the daemon starts


class VerdictProbe:
    """Arrival and acknowledgement time per verdict seq."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.arrival = array("d", [math.nan]) * capacity
        self.stored = array("d", [math.nan]) * capacity  # outbox.put returned: durable, ready to publish
        self.acked = array("d", [math.nan]) * capacity
        self.run_start_s = math.nan
        self.cpu_s = math.nan  # process CPU time (all threads) spent in Daemon.run, start-up excluded
        self.thread_cpu_s: dict[str, float] = {}
        self._current_arrival_s = math.nan
        self._row_seq: dict[int, int] = {}  # outbox row id -> seq, for rows handed to the sender

    def install(self) -> None:
        from edge import daemon as daemon_module
        from edge.publish.outbox import Outbox

        probe = self
        original_run = daemon_module.Daemon.run
        original_inspect = daemon_module.Daemon._inspect
        original_put, original_pending, original_ack = Outbox.put, Outbox.pending, Outbox.ack

        def run(daemon):
            probe.run_start_s = time.monotonic()
            cpu_start_s, threads_start = time.process_time(), thread_cpu_seconds()
            try:
                return original_run(daemon)
            finally:
                probe.cpu_s = time.process_time() - cpu_start_s
                threads_end = thread_cpu_seconds()
                probe.thread_cpu_s = {name: round(spent - threads_start.get(name, 0.0), 3)
                                      for name, spent in threads_end.items()}

        def inspect(daemon, frame, part_id):
            probe._current_arrival_s = frame.arrival_s
            return original_inspect(daemon, frame, part_id)

        def put(outbox, seq, messages):
            original_put(outbox, seq, messages)
            if 0 <= seq < probe.capacity:
                probe.arrival[seq] = probe._current_arrival_s
                probe.stored[seq] = time.monotonic()

        def pending(outbox, after_id=0, limit=500):
            rows = original_pending(outbox, after_id, limit)
            for row in rows:
                probe._row_seq[row.id] = row.seq
            return rows

        def ack(outbox, ids):
            acked_s = time.monotonic()
            ids = list(ids)
            for row_id in ids:
                seq = probe._row_seq.pop(row_id, None)
                if seq is not None and 0 <= seq < probe.capacity:
                    probe.acked[seq] = acked_s
            return original_ack(outbox, ids)

        daemon_module.Daemon.run = run
        daemon_module.Daemon._inspect = inspect
        Outbox.put, Outbox.pending, Outbox.ack = put, pending, ack

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
    out_path, cli_args = sys.argv[1], sys.argv[2:]
    probe = VerdictProbe(int(os.environ.get(CAPACITY_ENV, DEFAULT_CAPACITY)))
    probe.install()
    from edge.cli import main as lineguard_main

    code = lineguard_main(cli_args)
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(probe.to_dict(), out)
    return code


if __name__ == "__main__":
    sys.exit(main())
