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


RESERVED_NAMES = ["good", "Good", "GOOD", "train", "Test", "ground_truth"]


@pytest.mark.parametrize("name", RESERVED_NAMES)
def test_a_defect_class_named_like_the_good_class_or_a_layout_folder_is_refused(tmp_path, name):
    from edge.commands import CommandRefused, parse_command

    payload = json.dumps({"seq": 3, "label": "defect", "defect": name}).encode()
    with pytest.raises(CommandRefused, match="reserved"):
        parse_command("feedback", payload)
    frames = RecentFrames(max_bytes=1 << 20)
    frames.add(held(3))
    store = FeedbackStore(tmp_path / "feedback", frames)
    try:
        with pytest.raises(ValueError, match="reserved"):
            store.write(3, "defect", name)
    finally:
        store.close()
    assert not (tmp_path / "feedback").exists() or not any((tmp_path / "feedback").rglob("*.png"))


def label_and_wait(store: FeedbackStore, **fields) -> tuple[bool, str]:
    answers, done = [], threading.Event()
    store.label(FeedbackCommand(**fields), lambda *reply: (answers.append(reply), done.set()))
    assert done.wait(10)
    return answers[0][1], answers[0][2]


def test_a_seq_takes_one_label_a_conflicting_second_one_is_refused_and_the_same_one_is_kept(tmp_path):
    frames = RecentFrames(max_bytes=1 << 20)
    frames.add(held(3))
    store = FeedbackStore(tmp_path / "feedback", frames)
    try:
        assert label_and_wait(store, seq=3, label="good")[0]
        ok, reason = label_and_wait(store, seq=3, label="defect", defect="scratch")
        assert not ok and "seq 3 is already labelled good" in reason and "train/good/000000003-" in reason, reason
        ok, reason = label_and_wait(store, seq=3, label="good")  # the same label again changes nothing
        assert ok and "already" in reason, reason
    finally:
        store.close()
    files = sorted(str(p.relative_to(tmp_path / "feedback")) for p in (tmp_path / "feedback").rglob("*.png"))
    assert len(files) == 1 and files[0].startswith("train/good/000000003-"), files


@pytest.mark.parametrize("defect", ["../../../escaped", "a/../../b", "good", "Ground_Truth"])
def test_the_command_line_refuses_a_defect_class_the_daemon_refuses_before_writing_or_connecting(tmp_path, defect):
    from tests.support.daemon_harness import sample_folder, write_config
    from tests.support.helpers import run_cli

    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False},
                          web={"enabled": True, "port": 1})  # nothing listens there: no daemon runs
    for source in (("--image", FRAMES[0]), ("--seq", "3")):
        refused = run_cli("feedback", "--config", config, "defect", *source, "--defect", defect)
        assert refused.returncode == 65, (source, refused.stdout, refused.stderr)
        assert "defect" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert [p for p in tmp_path.rglob("*.png") if "frames" not in p.parts] == []
