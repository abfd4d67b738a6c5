"""Triggers on the real daemon: the frame inspected is one captured after the trigger (+ trigger.delay_ms), a
trigger while busy is answered `busy` and counted, and the MQTT reply carries the verdict's seq."""
from __future__ import annotations

import json
import signal
import time

import cv2
import pytest

from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import SAMPLES, wait_until
from tests.support.mjpeg import MjpegServer

PASS_IMAGE, FAIL_IMAGE = SAMPLES / "000-test00002-digit1.png", SAMPLES / "004-test00007-digit9.png"
STREAM_FPS = 20.0


def replies(collector) -> list[dict]:
    return [strict_json(p) for p in collector.payloads(f"{BASE}/reply")]


def stats(collector) -> list[dict]:
    return [strict_json(p) for p in collector.payloads(f"{BASE}/stats")]


def trigger(collector, request_id: str) -> None:
    collector.publish(f"{BASE}/cmd/trigger", json.dumps({"part_id": request_id, "request_id": request_id}))


class Scene:
    """What the camera sees: a digit 1 (a good part) or a digit 9 (a defect), switched by the test."""

    def __init__(self) -> None:
        self.images = {name: cv2.imread(str(path)) for name, path in (("pass", PASS_IMAGE), ("fail", FAIL_IMAGE))}
        self.showing = "pass"
        self.switched_s: float | None = None

    def image(self, counter: int):
        return self.images[self.showing]

    def show(self, name: str) -> None:
        self.showing, self.switched_s = name, time.monotonic()


@pytest.fixture
def camera():
    scene = Scene()
    server = MjpegServer(fps=STREAM_FPS, image=scene.image)
    server.start()
    server.scene = scene
    yield server
    server.paused.clear()
    server.stop()


def start_on_stream(tmp_path, broker, make_collector, camera, delay_ms: float):
    config = write_config(tmp_path, broker.port, tmp_path, source={"kind": "stream", "url": camera.url},
                          trigger={"mode": "triggered", "delay_ms": delay_ms, "timeout_s": 5.0})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/reply"])
    daemon = DaemonProcess(config)
    assert daemon.wait_for_log("ready:", 30), daemon.log()[-3000:]
    assert wait_until(lambda: camera.sent >= 5, 15), daemon.log()[-3000:]  # the daemon reads the stream
    return daemon, collector


def finish(daemon) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_a_trigger_never_inspects_a_frame_buffered_before_it(tmp_path, broker, make_collector, camera):
    """The camera stalls with a good part's frame in the daemon's buffer; the defect arrives, the trigger comes,
    then the stream resumes: the verdict must be the defect's, from a frame captured after the trigger."""
    daemon, collector = start_on_stream(tmp_path, broker, make_collector, camera, delay_ms=0)
    camera.paused.set()
    assert wait_until(camera.stalled.is_set, 5)
    time.sleep(0.5)  # the grabber has the last good frame in its buffer by now
    camera.scene.show("fail")
    trigger(collector, "after-stall")
    time.sleep(0.5)  # a daemon that took the buffered frame has answered by now
    camera.paused.clear()
    assert collector.wait_for(lambda m: replies(collector) and results(collector), 15), daemon.log()[-3000:]
    [reply], [result] = replies(collector), results(collector)
    assert (reply["ok"], reply["seq"]) == (True, result["seq"])
    assert (reply["verdict"], reply["score"]) == (result["verdict"], result["score"])
    assert result["part_id"] == "after-stall" and result["verdict"] == "fail", result
    finish(daemon)


def test_trigger_delay_waits_for_the_part_to_reach_the_camera(tmp_path, broker, make_collector, camera):
    """With delay_ms, the frame is one captured at least that long after the trigger: the defect that enters
    the picture well within the delay is the one judged, though good frames kept coming in between."""
    delay_ms = 2500.0
    daemon, collector = start_on_stream(tmp_path, broker, make_collector, camera, delay_ms=delay_ms)
    sent_s = time.monotonic()
    trigger(collector, "delayed")
    time.sleep(0.3)
    camera.scene.show("fail")  # 0.3 s after the trigger, 2.2 s before the frame may be taken
    assert collector.wait_for(lambda m: replies(collector) and results(collector), 15), daemon.log()[-3000:]
    answered_s = time.monotonic()
    [reply], [result] = replies(collector), results(collector)
    assert reply["seq"] == result["seq"] and result["verdict"] == "fail", result
    assert answered_s - sent_s >= delay_ms / 1000.0
    finish(daemon)


def test_a_trigger_while_busy_is_answered_busy_and_counted(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=4)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 0, "loop": True},
                          trigger={"mode": "triggered", "delay_ms": 800})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/reply", f"{BASE}/stats", f"{BASE}/status"])
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), 30), daemon.log()[-2000:]
    trigger(collector, "first")
    trigger(collector, "second")  # 800 ms of delay: the first one is still being answered
    assert collector.wait_for(lambda m: len(replies(collector)) >= 2 and results(collector), 15), daemon.log()[-3000:]
    by_id = {r["request_id"]: r for r in replies(collector)}
    [result] = results(collector)
    assert by_id["first"]["ok"] is True and by_id["first"]["seq"] == result["seq"]
    assert result["part_id"] == "first"
    second = by_id["second"]
    assert (second["ok"], second["seq"]) == (False, None) and second["reason"].startswith("busy"), second
    # Free again once answered: a third trigger is inspected.
    trigger(collector, "third")
    assert collector.wait_for(lambda m: len(results(collector)) >= 2, 15), daemon.log()[-3000:]
    assert [r["part_id"] for r in results(collector)] == ["first", "third"]
    assert collector.wait_for(lambda m: any(s["triggers"].get("inspected") == 2 for s in stats(collector)), 15)
    last = stats(collector)[-1]["triggers"]
    assert (last["received"], last["inspected"], last["busy"], last["no_frame"]) == (3, 2, 1, 0)
    finish(daemon)


def test_a_flood_of_busy_triggers_is_answered_each_but_logged_once_per_interval(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=4), source={"fps": 0, "loop": True},
                          trigger={"mode": "triggered", "delay_ms": 10000})
    collector = make_collector(broker, [f"{BASE}/reply", f"{BASE}/status"])
    daemon = DaemonProcess(config)
    assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), 30), daemon.log()[-2000:]
    for index in range(300):  # the first is held 10 s by delay_ms: the other 299 arrive while it is
        trigger(collector, f"t{index}")
    assert collector.wait_for(lambda m: len(replies(collector)) >= 300, 40), len(replies(collector))
    assert sum(r["reason"].startswith("busy") for r in replies(collector)) == 299  # every one answered
    finish(daemon)
    busy_lines = [line for line in daemon.log().splitlines() if "answering an earlier trigger" in line]
    assert 1 <= len(busy_lines) <= 2, busy_lines[:5]  # once, and once more if the flood crossed an interval


def test_a_trigger_with_no_frame_in_time_is_answered_so(tmp_path, broker, make_collector, camera):
    daemon, collector = start_on_stream(tmp_path, broker, make_collector, camera, delay_ms=0)
    camera.paused.set()
    assert wait_until(camera.stalled.is_set, 5)
    time.sleep(0.3)
    trigger(collector, "starved")
    assert collector.wait_for(lambda m: replies(collector), 15), daemon.log()[-3000:]
    [reply] = replies(collector)
    assert (reply["ok"], reply["seq"]) == (False, None)
    assert reply["reason"].startswith("no frame captured after the trigger"), reply
    assert results(collector) == []  # the buffered frame, older than the trigger, was not inspected
    camera.paused.clear()
    finish(daemon)


def test_a_live_camera_reports_running_once_frames_flow(tmp_path, broker, make_collector, camera):
    """A stream that works from its first connection says `running` on the state topic, as a replay does
    (no change of state inside the grabber, yet the station has said `starting` until then)."""
    config = write_config(tmp_path, broker.port, tmp_path, source={"kind": "stream", "url": camera.url})
    collector = make_collector(broker, [f"{BASE}/state"])
    daemon = DaemonProcess(config)
    sources = lambda: [strict_json(p)["source"] for p in collector.payloads(f"{BASE}/state")]  # noqa: E731
    assert collector.wait_for(lambda m: "running" in sources(), 30), (sources(), daemon.log()[-3000:])
    assert camera.sent > 0 and "reconnecting" not in sources(), sources()
    finish(daemon)
    assert collector.wait_for(lambda m: sources()[-1] == "stopped", 15), sources()


def test_after_a_replay_a_station_that_keeps_serving_answers_triggers_and_commands(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=3)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 0})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/reply"])
    daemon = DaemonProcess(config, None, "--keep-serving")
    assert daemon.wait_for_log("commands are taken, until SIGTERM", 60), daemon.log()[-3000:]
    assert collector.wait_for(lambda _: len(results(collector)) >= 3, 10)  # acknowledged is not yet received
    assert len(results(collector)) == 3
    for request_id in ("late", "later"):  # each answered, so the second is not refused as busy
        trigger(collector, request_id)
        assert collector.wait_for(lambda m: any(r["request_id"] == request_id for r in replies(collector)), 15)
    collector.publish(f"{BASE}/cmd/reload", json.dumps({"request_id": "reload"}))
    assert collector.wait_for(lambda m: len(replies(collector)) == 3, 15), daemon.log()[-3000:]
    late, later, reload = replies(collector)
    for reply in (late, later):
        assert (reply["ok"], reply["seq"]) == (False, None) and reply["reason"].startswith("no frame"), reply
    assert reload["ok"] is True and len(results(collector)) == 3
    finish(daemon)
