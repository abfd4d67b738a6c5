"""The lossless frame store behind feedback: bounded in bytes, oldest forgotten first, and a label for a frame
no longer held is refused with a reason instead of writing anything. Real sample frames, real PNG files."""
from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from edge.commands import FeedbackCommand
from edge.feedback import FeedbackStore, HeldFrame, RecentFrames
from tests.support.helpers import SAMPLES

FRAMES = sorted(SAMPLES.glob("*.png"))


def held(seq: int) -> HeldFrame:
    path = FRAMES[seq % len(FRAMES)]
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return HeldFrame(seq, image, path.name, 12.5 + seq, "fail", 21.7, {"name": "m", "sha256": "ab" * 32},
                     "2026-01-01T00:00:00.000Z")


def test_recent_frames_keep_the_newest_within_their_byte_budget():
    frame_bytes = held(1).image.nbytes
    frames = RecentFrames(max_bytes=3 * frame_bytes)
    for seq in range(1, 8):
        frames.add(held(seq))
    assert frames.seqs() == {5, 6, 7}
    assert frames.get(4) is None and np.array_equal(frames.get(7).image, held(7).image)
    RecentFrames(max_bytes=frame_bytes - 1).add(held(1))  # a frame bigger than the budget is not kept


def test_a_label_writes_the_frame_lossless_and_a_forgotten_frame_is_refused(tmp_path):
    frames = RecentFrames(max_bytes=2 * held(1).image.nbytes)
    for seq in (1, 2, 3):
        frames.add(held(seq))
    store = FeedbackStore(tmp_path / "feedback", frames)
    replies, done = [], threading.Event()

    def reply(command, ok, reason, request_id):
        replies.append((command, ok, reason, request_id))
        if len(replies) == 2:
            done.set()

    store.label(FeedbackCommand(seq=3, label="defect", defect="scratch", request_id="a"), reply)
    store.label(FeedbackCommand(seq=1, label="good", request_id="b"), reply)
    assert done.wait(10)
    store.close()
    (_, ok_a, reason_a, _), (_, ok_b, reason_b, _) = sorted(replies, key=lambda r: r[3])
    assert ok_a and "test/scratch/" in reason_a
    assert not ok_b and "not among the frames kept lossless" in reason_b
    [png] = (tmp_path / "feedback" / "test" / "scratch").glob("000000003-*.png")
    assert np.array_equal(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), held(3).image)
    meta = json.loads(png.with_suffix(".json").read_text())
    assert (meta["seq"], meta["label"], meta["score"], meta["model"]["sha256"]) == (3, "scratch", 15.5, "ab" * 32)
    assert not (tmp_path / "feedback" / "train").exists()


@pytest.mark.parametrize("payload", [{"seq": 0, "label": "good"}, {"seq": 3, "label": "ok"},
                                     {"seq": 3, "label": "defect", "defect": "../up"}])
def test_feedback_commands_outside_the_contract_are_refused(payload):
    with pytest.raises(ValueError):
        FeedbackCommand.model_validate(payload)


def test_the_command_line_files_an_image_and_resets_a_stored_threshold_without_a_daemon(tmp_path):
    from edge.threshold_store import THRESHOLD_FILE
    from tests.support.daemon_harness import sample_folder, write_config
    from tests.support.helpers import run_cli

    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False},
                          web={"enabled": True, "port": 1})  # nothing listens there: no daemon runs
    added = run_cli("feedback", "--config", config, "good", "--image", FRAMES[0])
    assert added.returncode == 0, added.stderr
    copy = tmp_path / "state" / "feedback" / "train" / "good" / FRAMES[0].name
    assert copy.read_bytes() == FRAMES[0].read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(FRAMES[0].read_bytes()[:40])  # a truncated PNG: refused, nothing filed
    refused = run_cli("feedback", "--config", config, "good", "--image", broken)
    assert refused.returncode == 65 and str(broken) in refused.stderr, refused.stderr
    assert sorted(p.name for p in copy.parent.iterdir()) == [FRAMES[0].name]
    by_seq = run_cli("feedback", "--config", config, "good", "--seq", "3")
    assert by_seq.returncode == 75 and "no station page answers" in by_seq.stderr
    stored = tmp_path / "state" / THRESHOLD_FILE
    stored.write_text('{"threshold": 30}')
    reset = run_cli("threshold", "--config", config, "--reset")
    assert reset.returncode == 0 and "removed" in reset.stdout and not stored.exists(), reset.stderr
    assert run_cli("threshold", "--config", config, "25").returncode == 75
