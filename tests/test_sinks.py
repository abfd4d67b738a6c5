"""Verdict sinks: every sink sees each verdict, and a slow or failing sink cannot stall inspection."""
from __future__ import annotations

import threading

from edge.config.load import load_config
from edge.daemon import Daemon
from edge.notify import SystemdNotifier
from edge.publish.example_sink import FailLogSink
from edge.publish.sinks import FanOut, VerdictSink
from tests.support.daemon_harness import sample_folder, write_config

RELEASE_WAIT_S = 10.0  # a synchronous fan-out would wait this long per frame, and the test would fail


class RecordingSink(VerdictSink):
    name = "recording"

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.started = threading.Event()

    def on_start(self) -> None:
        self.started.set()

    def on_verdict(self, event) -> None:
        self.seqs.append(event.seq)


class StuckSink(VerdictSink):
    """Blocks on its first verdict until the test releases it."""

    name = "stuck"
    queue_events = 2

    def __init__(self) -> None:
        self.release = threading.Event()
        self.handled = 0

    def on_verdict(self, event) -> None:
        self.release.wait(RELEASE_WAIT_S)
        self.handled += 1


class BrokenSink(VerdictSink):
    name = "broken"

    def on_verdict(self, event) -> None:
        raise RuntimeError("this output is broken")


def run_replay(tmp_path, sinks: list[VerdictSink]) -> Daemon:
    """A finite replay of the sample frames, in this process, without a broker."""
    config = write_config(tmp_path, None, sample_folder(tmp_path), mqtt={"enabled": False},
                          storage={"evidence": "never"})
    daemon = Daemon(load_config(config), config, sinks=sinks)
    daemon.notifier = SystemdNotifier(env={})
    daemon.start()
    try:
        assert daemon.run() == 0
    finally:
        stuck = [s for s in sinks if isinstance(s, StuckSink)]
        frames_when_run_ended = daemon.status.counters.frames
        for sink in stuck:
            assert sink.handled == 0  # still blocked while every frame was inspected
            sink.release.set()
        daemon.shutdown(clean=True)
    daemon.frames_when_run_ended = frames_when_run_ended
    return daemon


def test_every_sink_sees_every_verdict_in_order(tmp_path):
    recording = RecordingSink()
    daemon = run_replay(tmp_path, [recording, FailLogSink()])
    frames = daemon.status.counters.frames
    assert recording.started.is_set()
    assert frames > 10 and recording.seqs == list(range(1, frames + 1))


def test_a_stuck_or_failing_sink_neither_stalls_inspection_nor_loses_verdicts(tmp_path):
    recording, stuck, broken = RecordingSink(), StuckSink(), BrokenSink()
    daemon = run_replay(tmp_path, [stuck, broken, recording])
    frames = daemon.frames_when_run_ended
    sinks = daemon.station.fanout.stats()
    assert frames == len(list((tmp_path / "frames").glob("*.png")))
    assert recording.seqs == list(range(1, frames + 1))  # the healthy sink lost nothing
    assert sinks["broken"] == {"dropped": 0, "errors": frames}
    # The stuck sink held one event and queued two; the rest were dropped, counted, and nothing else lost.
    assert sinks["stuck"]["dropped"] >= frames - 2 - 2 * StuckSink.queue_events
    assert stuck.handled + sinks["stuck"]["dropped"] == frames


def test_delivered_events_reach_only_sinks_that_want_them(tmp_path):
    class Acks(VerdictSink):
        name = "acks"

        def on_delivered(self, seqs, acked_s):
            self.seen = seqs

    plain, acks = RecordingSink(), Acks()
    fanout = FanOut([plain, acks])
    fanout.delivered([3, 4])
    fanout.close()
    assert acks.seen == [3, 4] and plain.seqs == []


def test_an_inline_sink_runs_in_the_frame_loop_and_its_errors_are_counted(tmp_path):
    class Inline(VerdictSink):
        name = "inline"
        inline = True

        def __init__(self) -> None:
            self.threads: set[str] = set()

        def on_verdict(self, event) -> None:
            self.threads.add(threading.current_thread().name)
            if event.seq == 2:
                raise RuntimeError("one bad event")

    inline = Inline()
    daemon = run_replay(tmp_path, [inline])
    assert inline.threads == {threading.main_thread().name}
    assert daemon.station.fanout.stats()["inline"] == {"dropped": 0, "errors": 1}
