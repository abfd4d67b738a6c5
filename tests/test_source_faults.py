"""A looping replay that the machine cannot read (out of file descriptors) is a source away, retried, never the
"end" of a replay: a real daemon process, its real file-descriptor limit lowered and raised again from outside."""
from __future__ import annotations

import os
import resource
import signal
import time

from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import wait_until


def lowest_free_descriptor(pid: int, samples: int = 3) -> int:
    """The lowest descriptor number free in any of a few samples: with the limit there, no open can succeed
    (a count of open descriptors is not enough: a gap below it, or a file open only at that instant, would leave
    a number free)."""
    held = None
    for _ in range(samples):
        now = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        held = now if held is None else held & now
        time.sleep(0.03)
    return next(number for number in range(len(held) + 1) if number not in held)


def states(collector) -> list[dict]:
    return [strict_json(p) for p in collector.payloads(f"{BASE}/state")]


def test_a_looping_replay_out_of_file_descriptors_is_away_then_flows_again(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=4), source={"fps": 20, "loop": True})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/state"])
    daemon = DaemonProcess(config)
    pid = daemon.process.pid
    try:
        assert collector.wait_for(lambda _: len(results(collector)) >= 4, 30), daemon.log()[-3000:]
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # No descriptor left: every image file the replay opens now fails with EMFILE.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_descriptor(pid), limits[1]))
        away = lambda: any(s["source"] == "reconnecting" and "Too many open files" in s["detail"]  # noqa: E731
                           for s in states(collector))
        assert collector.wait_for(lambda _: away(), 15), (states(collector)[-3:], daemon.log()[-3000:])
        assert daemon.process.poll() is None, daemon.log()[-3000:]  # not "ended", not exit 0
        before = len(results(collector))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        assert collector.wait_for(lambda _: len(results(collector)) >= before + 4, 15), daemon.log()[-3000:]
        assert wait_until(lambda: states(collector)[-1]["source"] == "running", 10), states(collector)[-1]
        seqs = [r["seq"] for r in results(collector)]
        assert seqs == list(range(1, len(seqs) + 1))  # no frame lost a seq or got two while away
    finally:
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(30)
    assert code == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()
