"""Dashboard-ready payloads, through a real Mosquitto to the real daemon: heatmaps matched to their results over
MQTT 5 while MQTT 3.1.1 clients keep working, regions in heatmap-image pixels, a bare-number threshold command,
replay state `running`, and `offline` (not `stopped`) after a clean stop."""
from __future__ import annotations

import signal

import cv2
import numpy as np

from edge.core.overlay import overlay_scale, render_overlay
from edge.core.preprocess import PreprocessSpec
from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, unique_in_order, write_config
from tests.support.helpers import SAMPLES
from tests.support.mqtt5 import Mqtt5Collector

FRAME_SCALE = 2  # frames twice the model's 28 px, so frame, model and heatmap pixels all differ


def enlarged_frames(tmp_path, count: int):
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(SAMPLES.glob("*.png"))[:count]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / path.name), cv2.resize(image, None, fx=FRAME_SCALE, fy=FRAME_SCALE,
                                                        interpolation=cv2.INTER_NEAREST))
    return folder


def test_heatmaps_name_their_result_over_mqtt5_and_still_reach_311_clients(tmp_path, broker, make_collector):
    frames = enlarged_frames(tmp_path, 10)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 20}, mqtt={"heatmap": "always"})
    v311 = make_collector(broker, [f"{BASE}/#"])
    v5 = Mqtt5Collector(broker.host, broker.port, [f"{BASE}/#"])
    try:
        daemon = DaemonProcess(config)
        assert daemon.wait(60) == 0, daemon.log()[-3000:]
        assert v5.wait_for(lambda m: sum(x.topic == f"{BASE}/heatmap" for x in m) >= 10, 10)
        assert v311.wait_for(lambda m: sum(x.topic == f"{BASE}/heatmap" for x in m) >= 10, 10)
        assert v311.wait_for(lambda m: m[-1].topic == f"{BASE}/status", 10)
    finally:
        v5.close()
    by_id = {r["id"]: r for r in unique_in_order(results(v311))}
    assert len(by_id) == 10
    heatmaps5 = [m for m in v5.messages if m.topic == f"{BASE}/heatmap"]
    matched = {}
    for message in heatmaps5:
        props = message.user_properties
        result = by_id[props["id"]]
        assert (int(props["seq"]), props["verdict"]) == (result["seq"], result["verdict"])
        matched[result["seq"]] = message.payload
    assert sorted(matched) == sorted(r["seq"] for r in by_id.values())  # every result has its picture
    # A 3.1.1 client gets the very same pictures, only without the properties its protocol cannot carry.
    assert v311.payloads(f"{BASE}/heatmap") == [m.payload for m in heatmaps5]

    boxes = 0
    for result in by_id.values():
        image = cv2.imdecode(np.frombuffer(matched[result["seq"]], np.uint8), cv2.IMREAD_COLOR)
        height, width = image.shape[:2]
        per_model_px = width // 28  # the heatmap is the 28 px model grid enlarged by a whole factor
        assert (height, width) == (28 * per_model_px, 28 * per_model_px) and per_model_px > 1
        for region in result["regions"]:
            box = region["heatmap"]
            assert [box[k] for k in "xywh"] == [region[k] // FRAME_SCALE * per_model_px for k in "xywh"]
            assert box["x"] + box["w"] <= width and box["y"] + box["h"] <= height
            boxes += 1
    assert boxes > 0, "no failed part with a region among the samples"

    states = [strict_json(p)["source"] for p in v311.payloads(f"{BASE}/state")]
    assert "running" in states and states.index("running") < states.index("ended"), states
    assert states[-1] == "stopped"
    assert v311.payloads(f"{BASE}/status")[-1] == b"offline"


def test_threshold_takes_a_bare_number(tmp_path, broker, make_collector):
    frames = enlarged_frames(tmp_path, 4)
    config = write_config(tmp_path, broker.port, frames, source={"fps": 5, "loop": True})
    collector = make_collector(broker, [f"{BASE}/reply", f"{BASE}/state", f"{BASE}/status"])
    daemon = DaemonProcess(config)
    try:
        assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), 30), daemon.log()[-2000:]
        for payload in (b"30", b" 25.5 ", b"-1", b"true", b'"30"'):
            collector.publish(f"{BASE}/cmd/threshold", payload)
        replies = lambda: collector.json_payloads(f"{BASE}/reply")  # noqa: E731
        assert collector.wait_for(lambda _: len(replies()) >= 5, 15), daemon.log()[-2000:]
        # Refusals are answered at once from the network thread, accepted values between two frames.
        accepted = [r["reason"] for r in replies() if r["ok"]]
        refused = [r["reason"] for r in replies() if not r["ok"]]
        assert accepted[0].endswith("-> 30") and accepted[1] == "threshold 30 -> 25.5", replies()
        assert len(refused) == 3 and "greater than 0" in refused[0] and "JSON object or a number" in refused[2]
        assert collector.wait_for(
            lambda _: collector.json_payloads(f"{BASE}/state")[-1]["threshold"] == 25.5, 10)
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]


def test_the_heatmap_shows_the_part_of_the_frame_the_model_saw():
    frame = np.zeros((40, 80), np.uint8)
    frame[:, 40:] = 255  # left half dark, right half bright
    heat = np.zeros((28, 28), np.float32)  # no heat: the overlay differs only by the frame under it
    spec = PreprocessSpec(color="gray", height=28, width=28)
    brightness = lambda image: float(image.mean())  # noqa: E731
    right = render_overlay(frame, heat, spec, 1.0, frame_roi=(40, 0, 40, 40))
    left = render_overlay(frame, heat, spec, 1.0, frame_roi=(0, 0, 40, 40))
    whole = render_overlay(frame, heat, spec, 1.0)
    assert brightness(left) < brightness(whole) < brightness(right)
    # the bundle's own ROI applies after the device's, as in inspection
    bundle_roi = PreprocessSpec(color="gray", height=28, width=28, roi=(20, 0, 20, 40))
    assert brightness(render_overlay(frame, heat, bundle_roi, 1.0, frame_roi=(20, 0, 40, 40))) == brightness(right)
    assert right.shape[:2] == (28 * overlay_scale(spec),) * 2
