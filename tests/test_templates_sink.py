"""The output template: a sink registered the way a new output is (one line in OUTPUTS) runs in a real station
and receives every verdict, exactly as published."""
from __future__ import annotations

import threading

from edge.config.load import load_config
from edge.daemon import Daemon
from edge.notify import SystemdNotifier
from edge.publish import example_sink, outputs
from edge.publish.outputs import OutputParts, build_sinks
from edge.publish.sinks import VerdictEvent, VerdictSink
from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DEVICE, sample_folder, write_config


class ToySink(VerdictSink):
    """A new output as one would write it: it keeps what it is given."""

    name = "toy"
    queue_events = 1024  # room for the whole replay, so a busy test machine cannot make it drop any

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.started = threading.Event()
        self.verdicts: list[tuple[int, dict, bytes]] = []
        self.closed = False

    def on_start(self) -> None:
        self.started.set()

    def on_verdict(self, event: VerdictEvent) -> None:
        self.verdicts.append((event.seq, event.message, event.payload))

    def close(self) -> None:
        self.closed = True


def test_a_registered_output_receives_every_verdict_of_a_real_station(tmp_path, broker, make_collector, monkeypatch):
    built: list[ToySink] = []

    def build_toy(parts: OutputParts) -> ToySink:
        built.append(ToySink(parts.cfg().device_id))
        return built[-1]

    # What adding an output takes: one entry in OUTPUTS (here the toy, and the template as it ships).
    monkeypatch.setitem(outputs.OUTPUTS, "toy", build_toy)
    monkeypatch.setitem(outputs.OUTPUTS, "fail-log", example_sink.build)
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), storage={"evidence": "never"})
    collector = make_collector(broker, [f"{BASE}/result"])
    daemon = Daemon(load_config(config), config)
    daemon.notifier = SystemdNotifier(env={})  # never notify a systemd that runs the tests
    daemon.start()
    try:
        assert daemon.run() == 0
    finally:
        daemon.shutdown(clean=True)

    [toy] = built
    frames = daemon.status.counters.frames
    assert toy.device_id == DEVICE and toy.started.is_set() and toy.closed
    assert frames == len(list((tmp_path / "frames").glob("*.png")))
    assert [seq for seq, _, _ in toy.verdicts] == list(range(1, frames + 1))
    assert daemon.station.fanout.stats()["toy"] == {"dropped": 0, "errors": 0}
    assert "fail-log" in daemon.station.fanout.stats()
    # Each verdict as built is the message the broker delivered, to the byte.
    assert collector.wait_for(lambda m: len({strict_json(x.payload)["seq"] for x in m}) >= frames, 20)
    published = {strict_json(p)["seq"]: p for p in collector.payloads(f"{BASE}/result")}
    assert all(published[seq] == payload and strict_json(payload) == message for seq, message, payload in toy.verdicts)


def test_an_output_that_is_not_wanted_builds_no_sink_and_the_order_is_fixed(tmp_path, monkeypatch):
    class Named(VerdictSink):
        def __init__(self, name: str) -> None:
            self.name = name

    monkeypatch.setitem(outputs.OUTPUTS, "toy", lambda parts: None)
    parts = OutputParts(lambda: load_config(write_config(tmp_path, None, tmp_path)), None, evidence=None)
    sinks = build_sinks(parts, plant=Named("plant"), page=[Named("page")], extra=[Named("extra")])
    # No heatmap without a broker link, no Sparkplug node unless enabled; the shadow waits for cmd/shadow.
    assert [s.name for s in sinks] == ["evidence", "drift", "shadow", "history", "plant", "extra", "page"]
