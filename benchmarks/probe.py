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
        self.acked = array("d", [math.nan]) * capacity
        self.run_start_s = math.nan
        self._current_arrival_s = math.nan
        self._row_seq: dict[int, int] = {}  # outbox row id -> seq, for rows handed to the sender

    def install(self) -> None:
        from edge import daemon as daemon_module
        from edge.outbox import Outbox

        probe = self
        original_run = daemon_module.Daemon.run
        original_inspect = daemon_module.Daemon._inspect
        original_put, original_pending, original_ack = Outbox.put, Outbox.pending, Outbox.ack

        def run(daemon):
            probe.run_start_s = time.monotonic()
            return original_run(daemon)

        def inspect(daemon, frame, part_id):
            probe._current_arrival_s = frame.arrival_s
            return original_inspect(daemon, frame, part_id)

        def put(outbox, seq, messages):
            original_put(outbox, seq, messages)
            if 0 <= seq < probe.capacity:
                probe.arrival[seq] = probe._current_arrival_s

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
            "seq": seqs,
            "arrival_s": [self.arrival[s] for s in seqs],
            "acked_s": [None if math.isnan(self.acked[s]) else self.acked[s] for s in seqs],
        }


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
