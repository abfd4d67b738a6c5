"""Feedback over MQTT (`cmd/feedback` with the seq) fills an MVTec-layout folder that `lineguard train --data`
takes as it is: a real daemon, a real broker, a real (short) training run."""
from __future__ import annotations

import json
import signal

import cv2
import numpy as np
import pytest

from edge.feedback import FeedbackStore, HeldFrame, RecentFrames
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import MNIST_SMALL, SAMPLES, run_cli
from tests.test_reload import replies

WAIT_S = 60.0


@pytest.mark.slow
def test_labels_sent_over_mqtt_make_a_folder_the_trainer_retrains_on(tmp_path, broker, make_collector):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 20},
                          storage={"evidence_quota_mb": 0.001})  # the quota keeps almost no evidence
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/reply"])
    daemon = DaemonProcess(config, None, "--keep-serving")
    try:
        label_everything(collector, daemon)
    finally:
        daemon.kill()  # a no-op after the clean stop; ends a daemon left serving by a failed check
    check_folder_and_retrain(tmp_path, unique_in_order(results(collector)))


def label_everything(collector, daemon: DaemonProcess) -> None:
    assert daemon.wait_for_log("the station page stays up", WAIT_S), daemon.log()[-3000:]
    # The broker acknowledged every result; the subscriber may still be receiving them.
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= 20, WAIT_S)
    verdicts = unique_in_order(results(collector))
    assert len(verdicts) == 20
    # Label as a person would: the 1s are good parts, the 9s missed or caught defects.
    for verdict in verdicts:
        label = "good" if "digit1" in verdict["image"] else "defect"
        collector.publish(f"{BASE}/cmd/feedback", json.dumps({"seq": verdict["seq"], "label": label,
                                                              "defect": "nine", "request_id": f"f{verdict['seq']}"}))
    assert collector.wait_for(lambda _: len(replies(collector, command="feedback")) == len(verdicts), WAIT_S)
    assert all(r["ok"] for r in replies(collector, command="feedback")), replies(collector, command="feedback")
    collector.publish(f"{BASE}/cmd/feedback", b'{"seq": 999999, "label": "good", "request_id": "gone"}')
    assert collector.wait_for(lambda _: replies(collector, request_id="gone"), WAIT_S)
    assert replies(collector, request_id="gone")[0]["ok"] is False
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def check_folder_and_retrain(tmp_path, verdicts: list[dict]) -> None:
    feedback = tmp_path / "state" / "feedback"
    goods = sorted((feedback / "train" / "good").glob("*.png"))
    nines = sorted((feedback / "test" / "nine").glob("*.png"))
    assert len(goods) == sum("digit1" in v["image"] for v in verdicts) and len(nines) == len(verdicts) - len(goods)
    # The evidence quota removed every evidence image; the labelled frames live apart and stay.
    assert list((tmp_path / "state" / "evidence").glob("*.jpg")) == []
    out = tmp_path / "retrained"
    trained = run_cli("train", "--data", str(feedback), "--out", str(out), "--model", "dense", "--steps", "20",
                      "--val-fraction", "0.25")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (out / "model.json").is_file() and (out / "model.tflite").is_file()
    scored = run_cli("score", "--model", str(out), *map(str, goods[:2] + nines[:2]))
    assert scored.returncode == 0 and len(scored.stdout.splitlines()) == 4



def test_mqtt_the_page_and_the_cli_refuse_a_reserved_class_and_a_second_label_for_a_seq(tmp_path, broker,
                                                                                        make_collector):
    from edge.config.load import load_config
    from edge.web.client import PageClient
    from tests.support.broker import free_port
    from tests.test_station_page import healthy

    port = free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=4), web={"enabled": True, "port": port})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/reply"])
    daemon = DaemonProcess(config, None, "--keep-serving")
    try:
        assert daemon.wait_for_log("the station page stays up", WAIT_S), daemon.log()[-3000:]
        assert healthy(f"http://127.0.0.1:{port}/")
        collector.publish(f"{BASE}/cmd/feedback", json.dumps({"seq": 1, "label": "defect", "defect": "good",
                                                              "request_id": "m1"}))
        assert collector.wait_for(lambda _: replies(collector, request_id="m1"), WAIT_S)
        assert "reserved" in replies(collector, request_id="m1")[0]["reason"]
        page = PageClient(load_config(config).web)
        page.open()
        answer = page.command("/api/feedback", {"seq": 1, "label": "defect", "defect": "GOOD"})
        assert not answer["ok"] and "reserved" in answer["reason"], answer
        assert run_cli("feedback", "--config", config, "good", "--seq", "1").returncode == 0
        collector.publish(f"{BASE}/cmd/feedback", json.dumps({"seq": 1, "label": "defect", "defect": "scratch",
                                                              "request_id": "m2"}))
        assert collector.wait_for(lambda _: replies(collector, request_id="m2"), WAIT_S)
        assert "already labelled good" in replies(collector, request_id="m2")[0]["reason"]
        again = run_cli("feedback", "--config", config, "defect", "--seq", "1", "--defect", "scratch")
        assert again.returncode == 65 and "already labelled good" in again.stderr, again.stderr
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
    filed = sorted(p.relative_to(tmp_path / "state" / "feedback").as_posix()
                   for p in (tmp_path / "state" / "feedback").rglob("*.png"))
    assert len(filed) == 1 and filed[0].startswith("train/good/000000001-"), filed


def false_rejects_filed(folder, images) -> int:
    """The feedback folder as the station writes it: each image labelled "good part (false reject)"."""
    frames = RecentFrames(max_bytes=1 << 20)
    store = FeedbackStore(folder, frames)
    try:
        for seq, path in enumerate(images, start=1):
            frames.add(HeldFrame(seq, cv2.imread(str(path), cv2.IMREAD_UNCHANGED), path.name, 30.0, "fail", 21.7,
                                 {"name": "mnist-1", "sha256": "ab" * 32}, "2026-01-01T00:00:00.000Z"))
            store.write(seq, "good")
    finally:
        store.close()
    return len(images)


def test_extra_good_adds_the_feedback_folders_false_rejects_to_the_training_images(tmp_path):
    first = false_rejects_filed(tmp_path / "feedback-a", sorted(SAMPLES.glob("*digit1.png"))[:3])
    second = false_rejects_filed(tmp_path / "feedback-b", sorted(SAMPLES.glob("*digit1.png"))[3:5])
    with np.load(MNIST_SMALL) as data:
        original = int(np.sum(data["y_train"] == 1))
    out = tmp_path / "retrained"
    trained = run_cli("train", "--data", MNIST_SMALL, "--extra-good", tmp_path / "feedback-a",
                      "--extra-good", tmp_path / "feedback-b", "--out", out, "--steps", "10", "--val-fraction", "0")
    assert trained.returncode == 0, trained.stderr[-3000:]
    provenance = json.loads((out / "model.json").read_text())["provenance"]
    assert provenance["train_images"] == original + first + second, provenance
    for folder, count in (("feedback-a", first), ("feedback-b", second)):
        said = f"+ {count} extra good images from {tmp_path / folder}"
        assert said in provenance["data"] and said in trained.stderr, (provenance["data"], trained.stderr[-2000:])


def test_extra_good_without_train_good_images_is_refused_before_training(tmp_path):
    (tmp_path / "feedback" / "test" / "scratch").mkdir(parents=True)
    out = tmp_path / "retrained"
    refused = run_cli("train", "--data", MNIST_SMALL, "--extra-good", tmp_path / "feedback", "--out", out)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "feedback" / "train" / "good") in message and "--extra-good" in message, message
    assert not out.exists()
