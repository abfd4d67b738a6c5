"""Kill and outage run: every verdict is delivered exactly once by seq, whatever happens to the daemon or broker.

    python -m benchmarks.kill_outage                 # the acceptance run: 10 kills, a 20 s outage
    python -m benchmarks.kill_outage --kills 2 --outage-s 5 --fps 50     # shorter

Real processes only: a persistent Mosquitto, `lineguard run` processes, a subscriber with a persistent session.

1. ``--kills`` times: start the daemon on a looping replay at ``--fps``, let it inspect for a random while, SIGKILL.
2. Start it, stop the broker, SIGKILL the daemon inside the outage, start it again (it queues in its outbox),
   bring the broker back after ``--outage-s`` in all, let it catch up, SIGTERM.
3. A clean start in trigger mode, idle (no trigger), SIGTERM: it inspects nothing.
4. A finite replay, which ends by delivering whatever is still pending: a seq spent on nothing would show as a gap.

The subscriber's messages must hold exactly seq 1..N, every repeat an exact copy of an earlier message with the
same ``id``, and N must be the outbox's last seq. Prints a JSON summary and writes benchmarks/results/kill_outage.json;
exits 1 if any of that does not hold.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge.core.files import write_json_atomic
from edge.publish.outbox import Outbox
from tests.support.broker import MessageCollector, MosquittoBroker
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import ROOT, wait_until

RESULT_JSON = ROOT / "benchmarks" / "results" / "kill_outage.json"
KILL_AFTER_S = (0.3, 2.5)  # a random moment of inspection before each SIGKILL
KILL_INTO_OUTAGE_S = 0.4  # of the outage, when the daemon inside it is killed
CATCH_UP_S = 3.0  # after the outage, inspecting while the backlog goes out
FINAL_FRAMES = 20
WAIT_S = 120.0


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, file=sys.stderr, flush=True)


class Run:
    """The broker, the subscriber and every daemon started, with their exit codes."""

    def __init__(self, workdir: Path, fps: float) -> None:
        self.workdir = workdir
        # The subscriber is offline during the outage too and catches up from its queue: Mosquitto's
        # default max_queued_messages (1000) would drop the rest of the backlog before it reconnects.
        self.broker = MosquittoBroker(workdir / "broker", ["max_queued_messages 0"], persistence=True).start()
        self.collector = MessageCollector(self.broker.host, self.broker.port, [f"{BASE}/result"],
                                          client_id="kill-outage-subscriber", clean_session=False)
        self.frames = sample_folder(workdir)
        self.fps = fps
        self.codes: list[int] = []
        self.kills = 0
        self.tracebacks = 0

    def config(self, **sections) -> Path:
        base = {"source": {"fps": self.fps, "loop": True}, "mqtt": {"heatmap": "never"},
                "storage": {"dir": str(self.workdir / "state"), "evidence": "never", "drain_timeout_s": 60}}
        for section, values in sections.items():
            base[section] = {**base.get(section, {}), **values}
        return write_config(self.workdir, self.broker.port, self.frames, **base)

    def start(self, **sections) -> DaemonProcess:
        daemon = DaemonProcess(self.config(**sections))
        if not daemon.wait_for_log("ready:", WAIT_S):
            raise RuntimeError(f"the daemon did not start:\n{daemon.log()[-3000:]}")
        return daemon

    def end(self, daemon: DaemonProcess, sig: signal.Signals | None) -> None:
        if sig == signal.SIGKILL:
            daemon.kill()
            self.kills += 1
            code = -signal.SIGKILL
        else:
            if sig is not None:
                daemon.signal(sig)
            code = daemon.wait(WAIT_S)
        self.codes.append(code)
        self.tracebacks += "Traceback" in daemon.log()

    def received(self) -> list[dict]:
        return [json.loads(p) for p in self.collector.payloads(f"{BASE}/result")]

    def close(self) -> None:
        self.collector.close()
        self.broker.stop()


def kills(run: Run, count: int, rng: random.Random) -> None:
    for number in range(1, count + 1):
        daemon = run.start()
        threading.Event().wait(rng.uniform(*KILL_AFTER_S))
        run.end(daemon, signal.SIGKILL)
        log(f"kill {number}/{count}: {len(run.received())} message(s) received so far")


def outage(run: Run, outage_s: float) -> None:
    daemon = run.start()
    threading.Event().wait(1.0)
    run.broker.stop()
    began = time.monotonic()
    log("broker stopped")
    threading.Event().wait(outage_s * KILL_INTO_OUTAGE_S)
    run.end(daemon, signal.SIGKILL)
    log("daemon killed inside the outage")
    daemon = run.start()
    threading.Event().wait(max(0.0, began + outage_s - time.monotonic()))
    run.broker.start()
    log(f"broker back after {time.monotonic() - began:.1f} s")
    threading.Event().wait(CATCH_UP_S)
    run.end(daemon, signal.SIGTERM)


def idle_trigger_mode(run: Run) -> None:
    daemon = run.start(trigger={"mode": "mqtt"}, source={"fps": 0})
    threading.Event().wait(1.0)
    run.end(daemon, signal.SIGTERM)


def final_replay(run: Run) -> None:
    folder = run.workdir / "final-frames"
    folder.mkdir()
    for path in sorted(run.frames.glob("*.png"))[:FINAL_FRAMES]:
        (folder / path.name).write_bytes(path.read_bytes())
    config = run.config(source={"fps": 0, "loop": False, "path": str(folder)})
    daemon = DaemonProcess(config)
    run.end(daemon, None)


def summarize(run: Run, started: float, outage_s: float) -> dict:
    messages = run.received()
    by_id: dict[str, dict] = {}
    conflicting = 0
    for message in messages:
        first = by_id.setdefault(message["id"], message)
        conflicting += first != message
    seqs = sorted(m["seq"] for m in by_id.values())
    n = seqs[-1] if seqs else 0
    with Outbox(run.workdir / "state" / "outbox.sqlite3") as outbox:
        outbox_last_seq, outbox_depth = outbox.last_seq, outbox.depth()
    missing = sorted(set(range(1, n + 1)) - set(seqs))
    reused = len(seqs) - len(set(seqs))
    ok = (seqs == list(range(1, n + 1)) and not conflicting and outbox_last_seq == n and outbox_depth == 0
          and not run.tracebacks and run.codes[-1] == 0)
    return {
        "ok": ok, "n": n, "verdicts_received": len(by_id), "messages_received": len(messages),
        "duplicates": len(messages) - len(by_id), "duplicates_differing_from_first": conflicting,
        "seq_missing": missing[:20], "seq_missing_count": len(missing), "seq_given_twice": reused,
        "outbox_last_seq": outbox_last_seq, "outbox_depth_at_end": outbox_depth,
        "sigkills": run.kills, "starts": len(run.codes), "exit_codes": run.codes, "tracebacks": run.tracebacks,
        "fps": run.fps, "outage_s": outage_s, "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--fps", type=float, default=200.0)
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only; do not write the results file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lineguard-kill-outage-") as workdir:
        run = Run(Path(workdir), args.fps)
        try:
            kills(run, args.kills, random.Random(args.seed))
            outage(run, args.outage_s)
            idle_trigger_mode(run)
            final_replay(run)
            wait_until(lambda: len({m["id"] for m in run.received()}) >= max((m["seq"] for m in run.received()),
                                                                             default=0), 30)
            summary = summarize(run, started, args.outage_s)
        finally:
            run.close()
    print(json.dumps(summary, indent=2))
    if not args.no_save:
        write_json_atomic(RESULT_JSON, {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary})
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
