"""Feedback over MQTT (`cmd/feedback` with the seq) fills an MVTec-layout folder that `lineguard train --data`
takes as it is: a real daemon, a real broker, a real (short) training run."""
from __future__ import annotations

import json
import signal

import pytest

from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import run_cli
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
