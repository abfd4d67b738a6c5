"""Hot reload (SIGHUP and cmd/reload) and live threshold changes, on the real daemon process and a real broker."""
from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from edge.core.bundle import MANIFEST_NAME, sha256_of
from edge.config.load import parse_config
from edge.control import apply_live_settings
from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import MNIST_BUNDLE

WAIT_S = 30.0
FPS = 10
CALIBRATED_THRESHOLD = json.loads((MNIST_BUNDLE / MANIFEST_NAME).read_text())["calibration"]["threshold"]
CALIBRATION = json.loads((MNIST_BUNDLE / MANIFEST_NAME).read_text())["calibration"]
LOW, HIGH = CALIBRATION["score_min"] / 10, CALIBRATION["score_max"] * 10  # the range cmd/threshold may set
QUIET = {"heatmap": "never"}  # fewer messages to sift through; verdicts are what these tests follow


def copy_bundle(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(MNIST_BUNDLE, tmp_path / name))


def float_bundle(tmp_path: Path) -> Path:
    """A second real model: the bundle's float model as the main one, so its sha256 differs."""
    bundle = copy_bundle(tmp_path, "mnist-1-float")
    shutil.copy(bundle / "model_float.tflite", bundle / "model.tflite")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["name"] = "mnist-1-float"
    manifest["stages"][0].update(sha256=sha256_of(bundle / "model.tflite"), quantization="float")
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    return bundle


def json_messages(collector, subtopic: str) -> list[dict]:
    return [strict_json(p) for p in collector.payloads(f"{BASE}/{subtopic}")]


def replies(collector, **match) -> list[dict]:
    return [r for r in json_messages(collector, "reply") if all(r.get(k) == v for k, v in match.items())]


def wait_for_reply(collector, daemon: DaemonProcess, **match) -> dict:
    assert collector.wait_for(lambda _: replies(collector, **match), WAIT_S), daemon.log()[-3000:]
    return replies(collector, **match)[0]


def wait_for_results(collector, daemon: DaemonProcess, condition: Callable[[list[dict]], bool]) -> list[dict]:
    assert collector.wait_for(lambda _: condition(unique_in_order(results(collector))), WAIT_S), daemon.log()[-3000:]
    return unique_in_order(results(collector))


def assert_every_verdict_in_order(got: list[dict]) -> None:
    """Received verdicts are a gap-free prefix: seq 1, 2, 3... each once, in order."""
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))


def retained_state(make_collector, broker) -> dict:
    """What a dashboard that subscribes now sees on the retained state topic."""
    late = make_collector(broker, [f"{BASE}/state"])
    assert late.wait_for(1, 10)
    message = late.messages[-1]
    assert message.retain
    return strict_json(message.payload)


def sha(bundle: Path) -> str:
    return json.loads((bundle / MANIFEST_NAME).read_text())["stages"][0]["sha256"]


def test_sighup_and_reload_command_switch_models_between_frames_and_lose_nothing(tmp_path, broker, make_collector):
    first, second = copy_bundle(tmp_path, "mnist-1"), float_bundle(tmp_path)
    frames = sample_folder(tmp_path)
    live = dict(source={"fps": FPS, "loop": True}, mqtt=QUIET)
    config = write_config(tmp_path, broker.port, frames, model=str(first), **live)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    wait_for_results(collector, daemon, lambda got: len(got) >= 5)

    # SIGHUP: a new model and threshold apply at once; a new fps and keepalive wait for a restart.
    write_config(tmp_path, broker.port, frames, model=str(second), inference={"threshold": 30.0},
                 source={"fps": FPS + 2, "loop": True}, mqtt={**QUIET, "keepalive_s": 45})
    daemon.signal(signal.SIGHUP)
    reply = wait_for_reply(collector, daemon, command="reload", ok=True)
    assert "mnist-1-float" in reply["reason"] and "threshold 30" in reply["reason"]
    assert "restart" in reply["reason"] and "mqtt.keepalive_s, source.fps" in reply["reason"]
    wait_for_results(collector, daemon, lambda got: sum(r["model"]["sha256"] == sha(second) for r in got) >= 5)
    assert retained_state(make_collector, broker)["restart_required"] == ["mqtt.keepalive_s", "source.fps"]

    # cmd/reload back to the first config: nothing waits for a restart any more.
    write_config(tmp_path, broker.port, frames, model=str(first), **live)
    collector.publish(f"{BASE}/cmd/reload", json.dumps({"request_id": "back"}))
    reply = wait_for_reply(collector, daemon, request_id="back")
    assert reply["ok"] is True and "restart" not in reply["reason"]
    got = wait_for_results(collector, daemon, lambda got: got[-1]["model"]["sha256"] == sha(first)
                           and sum(r["model"]["sha256"] == sha(first) for r in got) >= 10)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]

    assert_every_verdict_in_order(got)
    models = [r["model"]["sha256"] for r in got]
    switches = [i for i in range(1, len(models)) if models[i] != models[i - 1]]
    assert len(switches) == 2, models  # first -> second -> first, each between two frames
    assert {r["threshold"] for r in got[switches[0]:switches[1]]} == {30.0}
    assert {r["threshold"] for r in got[switches[1]:]} == {CALIBRATED_THRESHOLD}
    state = retained_state(make_collector, broker)
    assert state["model"]["sha256"] == sha(first) and state["restart_required"] == []
    assert state["last_reload_error"] is None
    assert "need a restart: mqtt.keepalive_s, source.fps" in daemon.log()


def test_refused_reload_keeps_the_running_config_and_model_and_says_why(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path)
    config = write_config(tmp_path, broker.port, frames, source={"fps": FPS, "loop": True}, mqtt=QUIET)
    good_text = config.read_text()
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    wait_for_results(collector, daemon, lambda got: len(got) >= 3)

    config.write_text(good_text.replace(f'"fps": {FPS}', '"fps": "fast"'))
    daemon.signal(signal.SIGHUP)
    reply = wait_for_reply(collector, daemon, command="reload", ok=False)
    assert reply["reason"].startswith(f"{config}:") and "source.fps" in reply["reason"]
    assert "\n" not in reply["reason"]
    stats = lambda: json_messages(collector, "stats")
    assert collector.wait_for(lambda _: any(s["last_reload_error"] == reply["reason"] for s in stats()), 10)
    assert collector.wait_for(lambda _: json_messages(collector, "state")[-1]["last_reload_error"], 10)
    assert retained_state(make_collector, broker)["last_reload_error"] == reply["reason"]
    before = len(unique_in_order(results(collector)))
    wait_for_results(collector, daemon, lambda got: len(got) >= before + 5)  # still inspecting
    assert any("reload refused, keeping the running config and model" in line and "source.fps" in line
               for line in daemon.log().splitlines())

    config.write_text(good_text)
    collector.publish(f"{BASE}/cmd/reload", b'{"request_id": "fixed"}')
    assert wait_for_reply(collector, daemon, request_id="fixed")["ok"] is True
    assert collector.wait_for(lambda _: stats()[-1]["last_reload_error"] is None, 10)
    assert collector.wait_for(lambda _: json_messages(collector, "state")[-1]["last_reload_error"] is None, 10)
    assert retained_state(make_collector, broker)["last_reload_error"] is None
    got = unique_in_order(results(collector))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert_every_verdict_in_order(got)
    assert {r["threshold"] for r in got} == {CALIBRATED_THRESHOLD}


def test_threshold_command_applies_from_the_next_frame_and_is_reported(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path)
    frame_names = sorted(p.name for p in frames.glob("*.png"))
    config = write_config(tmp_path, broker.port, frames, source={"fps": FPS, "loop": True}, mqtt=QUIET)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    wait_for_results(collector, daemon, lambda got: any(r["verdict"] == "fail" for r in got))

    # Far outside the model's scores a threshold passes or fails everything: refused, with the allowed range.
    for request_id, value in (("huge", "1e308"), ("tiny", "1e-320")):
        collector.publish(f"{BASE}/cmd/threshold", f'{{"threshold": {value}, "request_id": "{request_id}"}}')
    collector.publish(f"{BASE}/cmd/threshold", b'{"threshold": 1000, "request_id": "t1"}')
    assert wait_for_reply(collector, daemon, request_id="t1")["ok"] is True
    for request_id in ("huge", "tiny"):
        refused = wait_for_reply(collector, daemon, request_id=request_id)
        assert refused["ok"] is False and f"outside {LOW:.6g} .. {HIGH:.6g}" in refused["reason"], refused
    changed = lambda: [s for s in json_messages(collector, "stats") if s["threshold"] == 1000]
    assert collector.wait_for(lambda _: changed(), 10)
    last_before = changed()[0]["last_seq"]  # published between the last old frame and the first new one
    got = wait_for_results(collector, daemon, lambda got: got and got[-1]["seq"] >= last_before + len(frame_names))
    assert retained_state(make_collector, broker)["threshold"] == 1000
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0

    assert_every_verdict_in_order(got)
    before = [r for r in got if r["seq"] <= last_before]
    after = [r for r in got if r["seq"] > last_before]
    assert {r["threshold"] for r in before} == {CALIBRATED_THRESHOLD} and any(r["verdict"] == "fail" for r in before)
    assert {r["threshold"] for r in after} == {1000} and {r["verdict"] for r in after} == {"pass"}
    assert {r["image"] for r in after} == set(frame_names)  # the 9s among them, which failed before, now pass


# ---------------------------------------------------------------- what a reload applies, in-process

BASE_CONFIG = """\
source: {kind: folder, path: frames, fps: 10}
mqtt: {host: broker.local, keepalive_s: 30, heatmap: fail}
storage: {dir: state, evidence: fail}
"""


def loaded(text: str, tmp_path: Path):
    return parse_config(text, base_dir=tmp_path)


def test_reload_applies_live_settings_and_names_the_rest(tmp_path):
    running = loaded(BASE_CONFIG, tmp_path)
    changed = loaded(
        "source: {kind: folder, path: other, fps: 10}\n"
        "mqtt: {host: broker2.local, keepalive_s: 30, heatmap: always}\n"
        "storage: {dir: state2, evidence: always}\n"
        "inference: {threshold: 40}\n"
        "trigger: {mode: mqtt}\n"
        "device_id: cell-9\n",
        tmp_path,
    )
    effective, restart_required = apply_live_settings(running, changed)
    assert restart_required == ["device_id", "mqtt.host", "source.path", "storage.dir"]
    assert effective.inference.threshold == 40 and effective.trigger.mode == "mqtt"
    assert effective.mqtt.heatmap == "always" and effective.storage.evidence == "always"
    assert effective.mqtt.host == "broker.local" and effective.storage.dir == tmp_path / "state"
    assert effective.device_id == running.device_id and effective.source == running.source


def test_reload_of_an_unchanged_config_needs_no_restart(tmp_path):
    running = loaded(BASE_CONFIG, tmp_path)
    effective, restart_required = apply_live_settings(running, loaded(BASE_CONFIG, tmp_path))
    assert restart_required == [] and effective == running


def test_reload_says_a_changed_password_file_needs_a_restart(tmp_path, broker, make_collector):
    secret = tmp_path / "mqtt-password"
    secret.write_text("first-secret\n")
    frames = sample_folder(tmp_path)
    login = {**QUIET, "username": "line-7", "password_file": str(secret)}
    config = write_config(tmp_path, broker.port, frames, source={"fps": FPS, "loop": True}, mqtt=login)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    wait_for_results(collector, daemon, lambda got: len(got) >= 3)

    secret.write_text("second-secret\n")  # same path, so only the file's content tells
    daemon.signal(signal.SIGHUP)
    reply = wait_for_reply(collector, daemon, command="reload", ok=True)
    assert "restart" in reply["reason"] and "mqtt.password" in reply["reason"]
    assert retained_state(make_collector, broker)["restart_required"] == ["mqtt.password"]

    secret.write_text("first-secret")  # back to what the connection uses: nothing waits any more
    collector.publish(f"{BASE}/cmd/reload", json.dumps({"request_id": "back"}))
    assert "restart" not in wait_for_reply(collector, daemon, request_id="back")["reason"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]
    for password in ("first-secret", "second-secret"):
        assert password not in daemon.log()
        assert not [m.topic for m in collector.messages if password.encode() in m.payload]
