"""The station's folders share storage.dir with the outbox, and the outbox wins: feedback and evidence have
quotas and stop at a shared free-space reserve, a seq is never given twice, and a disk filled from outside
stops the station (exit 75) instead of publishing verdicts whose seq is not recorded.

Real tmpfs file systems, a real daemon process, a real Mosquitto.
"""
from __future__ import annotations

import json
import signal
import threading
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.commands import FeedbackCommand
from edge.exitcodes import EX_TEMPFAIL
from edge.feedback import FeedbackStore, HeldFrame, RecentFrames
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import run_cli, wait_until
from tests.test_faults import (  # noqa: F401 (small_disk is a fixture)
    fill, log_lines_with, one_error_line, outbox_rows_and_last_seq, small_disk,
)

WAIT_S = 30.0
FRAME_SIDE = 400  # noise frames: about 160 kB as PNG, so a few dozen labels reach the reserve
RESERVE_MB = 6  # of the 16 MB disk: room for the outbox's write-ahead log and an outage's verdicts
OUTAGE_S = 5.0


def noise_frames(folder: Path, count: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        cv2.imwrite(str(folder / f"noise-{index}.png"), rng.integers(0, 256, (FRAME_SIDE, FRAME_SIDE), np.uint8))
    return folder


def replies(collector) -> list[dict]:
    return [json.loads(p) for p in collector.payloads(f"{BASE}/reply")]


def latest_stats(collector) -> dict:
    """The newest stats of one daemon run by its uptime: a broker restart may deliver an older one last."""
    payloads = [json.loads(p) for p in collector.payloads(f"{BASE}/stats")]
    return max(payloads, key=lambda stats: stats["uptime_s"]) if payloads else {}


def seqs_given_once(messages: list[dict]) -> list[int]:
    """The seqs received, each checked to belong to one verdict (one id) only."""
    ids = defaultdict(set)
    for message in messages:
        ids[message["seq"]].add(message["id"])
    twice = {seq: sorted(found) for seq, found in ids.items() if len(found) > 1}
    assert twice == {}, f"seqs given to more than one verdict: {twice}"
    return sorted(ids)


def flood_feedback(collector, daemon: DaemonProcess) -> list[dict]:
    """Label every verdict as it comes until the station refuses labels for low space; the refusals."""
    labelled: set[int] = set()

    def label_new() -> bool:
        for verdict in unique_in_order(results(collector)):
            if verdict["seq"] not in labelled:
                labelled.add(verdict["seq"])
                collector.publish(f"{BASE}/cmd/feedback", json.dumps(
                    {"seq": verdict["seq"], "label": "good", "request_id": f"f{verdict['seq']}"}))
        refused = [r for r in replies(collector) if r["command"] == "feedback" and not r["ok"]]
        return len(refused) >= 5 or daemon.process.poll() is not None

    assert wait_until(label_new, 60, 0.05), daemon.log()[-3000:]
    return [r for r in replies(collector) if r["command"] == "feedback" and not r["ok"]]


def test_a_feedback_flood_stops_at_the_reserve_the_outbox_keeps_writing_and_no_seq_is_given_twice(
        tmp_path, small_disk, make_broker, make_collector):
    broker = make_broker(persistence=True)
    state = small_disk / "state"
    config = write_config(tmp_path, broker.port, noise_frames(tmp_path / "frames"),
                          source={"fps": 20, "loop": True}, mqtt={"heatmap": "never"},
                          storage={"dir": str(state), "evidence": "always", "evidence_quota_mb": 1,
                                   "reserve_mb": RESERVE_MB, "drain_timeout_s": 60},
                          feedback={"quota_mb": 100})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/reply", f"{BASE}/stats"],
                               client_id="dashboard", clean_session=False)
    first = DaemonProcess(config)
    try:
        refused = flood_feedback(collector, first)
        assert all("storage.reserve_mb" in r["reason"] and str(state) in r["reason"] for r in refused), refused
        broker.stop()  # an outage: verdicts only go to the outbox, which must still take them
        threading.Event().wait(OUTAGE_S)
        broker.start()
        restarted = len(collector.payloads(f"{BASE}/stats"))
        # Stats published after the outage (not one queued before it) must show the outage's backlog delivered:
        # at most the verdict of the moment still waits for its PUBACK (the replay goes on at 20 fps).
        assert collector.wait_for(lambda _: len(collector.payloads(f"{BASE}/stats")) > restarted + 1
                                  and latest_stats(collector).get("outbox", {}).get("depth", 99) <= 1, WAIT_S), \
            (latest_stats(collector), first.log()[-3000:])
        stats = latest_stats(collector)
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log()[-3000:]
    finally:
        first.kill()
    assert stats["outbox"]["errors"] == 0 and stats["outbox"]["lost"] == 0, stats["outbox"]
    assert stats["feedback"]["refused_low_space"] >= 5 and stats["feedback"]["saved"] >= 10, stats["feedback"]
    assert len(log_lines_with(first.log(), "feedback: label refused")) == 1, "one warning, not one per label"
    second = DaemonProcess(config, None, "--max-frames", "20")  # the restart goes on after the last seq
    assert second.wait(90) == 0, second.log()[-3000:]
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= outbox_rows_and_last_seq(state)[1],
                              WAIT_S)
    got = unique_in_order(results(collector))
    assert seqs_given_once(got) == list(range(1, len(got) + 1))
    assert outbox_rows_and_last_seq(state) == (0, len(got))  # each seq the outbox recorded, delivered once
    assert "Traceback" not in first.log() + second.log()


def test_a_disk_filled_from_outside_stops_the_station_with_exit_75_and_no_seq_is_given_twice(
        tmp_path, small_disk, broker, make_collector):
    state = small_disk / "state"
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 10, "loop": True},
                          mqtt={"heatmap": "never"}, storage={"dir": str(state), "evidence": "never"})
    collector = make_collector(broker, [f"{BASE}/result"])
    first = DaemonProcess(config)
    try:
        assert collector.wait_for(lambda _: len(results(collector)) >= 3, WAIT_S), first.log()[-3000:]
        filler = fill(small_disk)
        assert wait_until(lambda: first.process.poll() is not None, 60), "still running on a full disk"
        assert first.wait(5) == EX_TEMPFAIL, first.log()[-3000:]
    finally:
        first.kill()
    [stopped] = log_lines_with(first.log(), "no verdict is published without a durable seq")
    assert str(state) in stopped and "bytes free" in stopped, stopped

    again = run_cli("run", "--config", config, timeout=60)  # systemd's restart while the disk is still full
    assert again.returncode == EX_TEMPFAIL, again.stderr[-3000:]
    assert str(state) in one_error_line(again.stderr, "bytes free")

    filler.unlink()
    assert run_cli("run", "--config", config, "--max-frames", "10", timeout=60).returncode == 0
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= 13, WAIT_S)
    got = unique_in_order(results(collector))
    assert seqs_given_once(got) == list(range(1, len(got) + 1))


def held(seq: int, side: int = 64) -> HeldFrame:
    image = np.random.default_rng(seq).integers(0, 256, (side, side), np.uint8)
    return HeldFrame(seq, image, f"part-{seq}.png", 1.0, "fail", 2.0, {"name": "m", "sha256": "ab" * 32}, "ts")


def test_feedback_past_its_quota_is_refused_with_a_reason_and_counted_and_nothing_is_removed(tmp_path):
    frames = RecentFrames(max_bytes=1 << 22)
    for seq in range(1, 8):
        frames.add(held(seq))
    store = FeedbackStore(tmp_path / "feedback", frames, quota_bytes=3 * 4096 + 2000)  # about three labels
    answers, done = [], threading.Event()
    try:
        for seq in range(1, 8):
            store.label(FeedbackCommand(seq=seq, label="good", request_id=str(seq)),
                        lambda *reply: (answers.append(reply), len(answers) == 7 and done.set()))
        assert done.wait(10)
    finally:
        store.close()
    refused = [reason for _, ok, reason, _ in answers if not ok]
    saved = sorted((tmp_path / "feedback").rglob("*.png"))
    assert 1 <= len(saved) < 7 and len(refused) == 7 - len(saved), answers
    assert all("feedback.quota_mb" in reason and str(tmp_path / "feedback") in reason for reason in refused)
    assert store.stats()["refused_quota"] == len(refused) and store.stats()["saved"] == len(saved)
    reopened = FeedbackStore(tmp_path / "feedback", frames, quota_bytes=3 * 4096 + 2000)  # counts what is there
    try:
        assert reopened.stats()["bytes"] == store.stats()["bytes"] > 0
    finally:
        reopened.close()


def test_the_older_name_of_the_reserve_still_loads_and_giving_both_is_refused(tmp_path):
    from edge.config.errors import ConfigError
    from edge.config.load import load_config

    old = write_config(tmp_path, None, sample_folder(tmp_path, count=1), storage={"evidence_reserve_mb": 12.0})
    assert load_config(old).storage.reserve_mb == 12.0
    both = write_config(tmp_path, None, tmp_path / "frames", storage={"evidence_reserve_mb": 12.0, "reserve_mb": 5.0})
    with pytest.raises(ConfigError, match="older name of reserve_mb"):
        load_config(both)


def test_the_command_line_files_an_image_within_the_same_quota_and_reserve(tmp_path, small_disk):
    from tests.support.helpers import SAMPLES

    image = sorted(SAMPLES.glob("*.png"))[0]
    frames = sample_folder(tmp_path, count=1)
    tight = write_config(tmp_path, None, frames, mqtt={"enabled": False}, feedback={"quota_mb": 0.0001},
                         storage={"dir": str(small_disk / "state"), "reserve_mb": 1})
    refused = run_cli("feedback", "--config", tight, "good", "--image", image)
    assert refused.returncode == 65 and "feedback.quota_mb" in refused.stderr, refused.stderr
    roomy = write_config(tmp_path, None, frames, mqtt={"enabled": False},
                         storage={"dir": str(small_disk / "state"), "reserve_mb": 1})
    filler = fill(small_disk, leave_bytes=500_000)  # less free than the reserve
    refused = run_cli("feedback", "--config", roomy, "good", "--image", image)
    assert refused.returncode == 65 and "storage.reserve_mb" in refused.stderr, refused.stderr
    assert not (small_disk / "state" / "feedback").exists()
    filler.unlink()
    assert run_cli("feedback", "--config", roomy, "good", "--image", image).returncode == 0


def test_a_verdict_the_outbox_cannot_record_is_not_published_and_its_seq_is_given_again(tmp_path):
    from edge.errors import StorageError
    from edge.publish.outbox import Outbox
    from edge.publish.recorder import VerdictRecorder

    outbox = Outbox(tmp_path / "outbox.sqlite3")
    recorder = VerdictRecorder(outbox, BASE)
    recorder.record(recorder.next_seq(), [("result", b"{}", 1)])
    outbox.close()  # any write now fails, as on a disk filled from outside
    seq = recorder.next_seq()
    with pytest.raises(StorageError, match=f"cannot record verdict seq {seq}.*no verdict is published"):
        recorder.record(seq, [("result", b"{}", 1)])
    assert recorder.last_seq == 1 and recorder.health.errors == 1 and recorder.health.lost == 0
    with Outbox(tmp_path / "outbox.sqlite3") as reopened:
        assert reopened.next_seq() == seq == 2  # never published, so the next start may give it
