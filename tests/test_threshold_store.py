"""A threshold set by command is stored in storage.dir: it outlasts reloads and restarts until it is reset, and
a stored one the model cannot take stops the start, naming the file. Real daemon processes, real broker."""
from __future__ import annotations

import json
import signal

from edge.threshold_store import THRESHOLD_FILE
from tests.support.daemon_harness import BASE, DaemonProcess, sample_folder, write_config
from tests.support.helpers import run_cli
from tests.test_reload import (CALIBRATED_THRESHOLD, FPS, HIGH, LOW, QUIET, json_messages, retained_state,
                               wait_for_reply, wait_for_results)

APPLIED = 30.0  # within the model's range, between the 1s' and the 9s' scores


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
    stats_seen = len(json_messages(collector, "stats"))
    collector.publish(f"{BASE}/cmd/threshold_reset", b'{"request_id": "back"}')
    reply = wait_for_reply(collector, daemon, request_id="back")
    assert reply["ok"] is True and f"-> {CALIBRATED_THRESHOLD:.6g}" in reply["reason"], reply
    assert not stored.exists()
    assert retained_state(make_collector, broker)["threshold"] == CALIBRATED_THRESHOLD
    assert thresholds_after(collector, daemon, stats_last_seq_after(collector, stats_seen)) == {CALIBRATED_THRESHOLD}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_a_stored_threshold_out_of_range_or_unreadable_stops_the_start_naming_the_file(tmp_path):
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False})
    stored = tmp_path / "state" / THRESHOLD_FILE
    stored.parent.mkdir()
    for content, expected in ((json.dumps({"threshold": HIGH * 2}), f"outside {LOW:.6g} .. {HIGH:.6g}"),
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
