"""A threshold set by command is stored in storage.dir: it outlasts reloads and restarts until it is reset, and
a stored one the model cannot take stops the start, naming the file. Real daemon processes, real broker."""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from edge.core.bundle import MANIFEST_NAME, load_bundle
from edge.threshold_audit import read_changes
from edge.threshold_store import THRESHOLD_FILE
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import FIXTURES, MNIST_BUNDLE, ROOT, run_cli
from tests.test_reload import (CALIBRATED_THRESHOLD, FPS, HIGH, LOW, QUIET, json_messages, retained_state,
                               wait_for_reply, wait_for_results)

APPLIED = 30.0  # within the model's range, between the 1s' and the 9s' scores


def model_sha(bundle: Path) -> str:
    """The sha256 a stored threshold is bound to: the one every payload names the model by."""
    return load_bundle(bundle).model_sha256


def stats_last_seq_after(collector, count_before: int) -> int:
    """last_seq of the first stats message published after ``count_before`` of them had arrived."""
    assert collector.wait_for(lambda _: len(json_messages(collector, "stats")) > count_before, 10)
    return json_messages(collector, "stats")[count_before]["last_seq"]


def thresholds_after(collector, daemon, seq: int, count: int = 5) -> set[float]:
    got = wait_for_results(collector, daemon, lambda got: got and got[-1]["seq"] >= seq + count)
    return {r["threshold"] for r in got if r["seq"] > seq}


def test_a_commanded_threshold_outlasts_reload_and_restart_until_reset(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": FPS, "loop": True},
                          mqtt=QUIET)
    stored = tmp_path / "state" / THRESHOLD_FILE
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    wait_for_results(collector, daemon, lambda got: len(got) >= 3)
    collector.publish(f"{BASE}/cmd/threshold", json.dumps({"threshold": APPLIED, "request_id": "t1"}))
    assert wait_for_reply(collector, daemon, request_id="t1")["ok"] is True
    record = json.loads(stored.read_text())
    assert record["threshold"] == APPLIED and len(record["model"]["sha256"]) == 64

    # A reload used to put the bundle's threshold back silently; now the stored one stays in force.
    stats_seen = len(json_messages(collector, "stats"))
    collector.publish(f"{BASE}/cmd/reload", b'{"request_id": "r1"}')
    assert wait_for_reply(collector, daemon, request_id="r1")["ok"] is True
    assert retained_state(make_collector, broker)["threshold"] == APPLIED
    assert thresholds_after(collector, daemon, stats_last_seq_after(collector, stats_seen)) == {APPLIED}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0

    # A restart too.
    collector.clear()
    daemon = DaemonProcess(config)
    got = wait_for_results(collector, daemon, lambda got: len(got) >= 5)
    assert {r["threshold"] for r in got} == {APPLIED}
    assert f"threshold {APPLIED:g} set by command" in daemon.log()

    # Back to the bundle's threshold: the file goes, the next verdicts and the state say so.
    collector.publish(f"{BASE}/cmd/threshold_reset", b'{"request_id": "back"}')
    reply = wait_for_reply(collector, daemon, request_id="back")
    assert reply["ok"] is True and f"-> {CALIBRATED_THRESHOLD:.6g}" in reply["reason"], reply
    assert not stored.exists()
    assert retained_state(make_collector, broker)["threshold"] == CALIBRATED_THRESHOLD
    # The reset publishes stats before its reply: the first with the bundle's threshold comes between the last
    # frame judged with the stored one and the first judged without it.
    reset = lambda: [s for s in json_messages(collector, "stats") if s["threshold"] == CALIBRATED_THRESHOLD]  # noqa: E731
    assert collector.wait_for(lambda _: reset(), 10)
    assert thresholds_after(collector, daemon, reset()[0]["last_seq"]) == {CALIBRATED_THRESHOLD}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    # Both changes are in the threshold audit of the history database, newest first, with their origin.
    changes = read_changes(tmp_path / "state")
    assert [(c["who"], c["action"], c["to"]) for c in changes] == [("mqtt", "reset", CALIBRATED_THRESHOLD),
                                                                   ("mqtt", "set", APPLIED)]
    assert changes[0]["from"] == APPLIED and changes[1]["from"] == CALIBRATED_THRESHOLD


def test_a_stored_threshold_out_of_range_or_unreadable_stops_the_start_naming_the_file(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False})
    stored = tmp_path / "state" / THRESHOLD_FILE
    stored.parent.mkdir()
    own = {"name": "mnist-1", "sha256": model_sha(MNIST_BUNDLE)}  # its own model: the range decides
    for content, expected in ((stored_for(own, HIGH * 2), f"outside {LOW:.6g} .. {HIGH:.6g}"),
                              ('{"threshold": "high"}', "is not a finite number"),
                              ("not json", "not a stored threshold")):
        stored.write_text(content)
        daemon = DaemonProcess(config)
        assert daemon.wait(60) == 78, daemon.log()[-2000:]
        errors = [line for line in daemon.log().splitlines() if "cannot start" in line]
        assert len(errors) == 1 and str(stored) in errors[0] and expected in errors[0], daemon.log()[-2000:]
        assert "inspected" not in daemon.log() and "PASS" not in daemon.log()
        check = run_cli("check-config", str(config))
        assert check.returncode == 78 and str(stored) in check.stderr and expected in check.stderr, check.stderr


# ---------------------------------------------------------------- a stored threshold is bound to its model

TILE_BUNDLE = ROOT / "models" / "magnetic-tile"
TILE_THRESHOLD = json.loads((TILE_BUNDLE / MANIFEST_NAME).read_text())["calibration"]["threshold"]
CARRIED = 300.0  # inside both models' ranges: only the model's sha256 tells whose threshold it is


def tile_frames(tmp_path: Path) -> Path:
    """Real magnetic-tile crops, good and defective; mnist-1 scores them too (badly), which is all it needs."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted((FIXTURES / "magnetic-tile" / "test").glob("*/*.jpg")):
        shutil.copy(path, folder / path.name)
    return folder


def set_aside(storage: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(storage.glob(f"{THRESHOLD_FILE}.dropped-*"))]


def test_a_threshold_set_on_one_model_is_dropped_loudly_when_a_reload_switches_the_model(
        tmp_path, broker, make_collector):
    frames, mnist_sha, tile_sha = tile_frames(tmp_path), model_sha(MNIST_BUNDLE), model_sha(TILE_BUNDLE)
    live = dict(source={"fps": FPS, "loop": True}, mqtt=QUIET, inference={"quality_gate": False})
    config = write_config(tmp_path, broker.port, frames, **live)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    wait_for_results(collector, daemon, lambda got: len(got) >= 3)
    collector.publish(f"{BASE}/cmd/threshold", json.dumps({"threshold": CARRIED, "request_id": "t1"}))
    assert wait_for_reply(collector, daemon, request_id="t1")["ok"] is True

    write_config(tmp_path, broker.port, frames, model=str(TILE_BUNDLE), **live)
    collector.publish(f"{BASE}/cmd/reload", b'{"request_id": "r1"}')
    reply = wait_for_reply(collector, daemon, request_id="r1")
    assert reply["ok"] is True and reply["reason"].startswith(f"model magnetic-tile, threshold {TILE_THRESHOLD:.6g};")
    assert f"stored threshold {CARRIED:g}" in reply["reason"] and "dropped" in reply["reason"], reply
    state = retained_state(make_collector, broker)
    assert state["threshold"] == TILE_THRESHOLD and state["model"]["sha256"] == tile_sha
    assert state["threshold_dropped"]["threshold"] == CARRIED
    assert state["threshold_dropped"]["model"]["sha256"] == mnist_sha
    tiles = lambda got: [r for r in got if r["model"]["sha256"] == tile_sha]
    got = tiles(wait_for_results(collector, daemon, lambda got: len(tiles(got)) >= 2 * len(list(frames.iterdir()))))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]

    assert {r["threshold"] for r in got} == {TILE_THRESHOLD}
    assert {r["image"] for r in got if r["verdict"] == "fail"} >= {"blowhole_0.jpg", "uneven_0.jpg"}
    warnings = [line for line in daemon.log().splitlines() if "WARNING" in line and "dropped" in line]
    assert len(warnings) == 1 and all(text in warnings[0] for text in (
        mnist_sha, tile_sha, f"{CARRIED:g}", f"{TILE_THRESHOLD:.6g}", str(tmp_path / "state" / THRESHOLD_FILE)))
    assert not (tmp_path / "state" / THRESHOLD_FILE).exists()
    assert [r["threshold"] for r in set_aside(tmp_path / "state")] == [CARRIED]
    dropped = read_changes(tmp_path / "state")[0]
    assert (dropped["who"], dropped["action"], dropped["from"], dropped["to"], dropped["model_sha"]) == \
        ("station", "dropped", CARRIED, TILE_THRESHOLD, tile_sha)


def stored_for(model: dict | None, threshold: float = CARRIED) -> str:
    return json.dumps({"threshold": threshold, **({"model": model} if model is not None else {}),
                       "set_by": "command", "ts": "2026-01-01T00:00:00Z"})


def test_a_stored_threshold_of_another_model_or_of_none_is_not_applied_at_start(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False})
    storage, mnist_sha, tile_sha = tmp_path / "state", model_sha(MNIST_BUNDLE), model_sha(TILE_BUNDLE)
    stored = storage / THRESHOLD_FILE
    storage.mkdir()
    for model, expected in (({"name": "magnetic-tile", "sha256": tile_sha}, tile_sha),
                            (None, "names no model"), ({"name": "mnist-1", "sha256": "0" * 64}, "0" * 64)):
        stored.write_text(stored_for(model))
        check = run_cli("check-config", str(config))
        assert check.returncode == 0 and str(stored) in check.stderr and expected in check.stderr, check.stderr
        assert stored.exists()  # check-config only says it
        daemon = DaemonProcess(config)
        assert daemon.wait(60) == 0, daemon.log()[-2000:]
        log = daemon.log()
        warnings = [line for line in log.splitlines() if "WARNING" in line and str(stored) in line]
        assert len(warnings) == 1 and expected in warnings[0] and mnist_sha in warnings[0], log[-2000:]
        assert f"ready: model mnist-1 (threshold {CALIBRATED_THRESHOLD:.6g})" in log
        assert "set by command" not in log and not stored.exists()
    assert len(set_aside(storage)) == 3

    stored.write_text(stored_for({"name": "mnist-1", "sha256": mnist_sha}, 30.0))  # its own model: applied
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0 and "ready: model mnist-1 (threshold 30)" in daemon.log(), daemon.log()[-2000:]
    assert stored.exists() and "WARNING" not in daemon.log()
