"""Trainer checks: an out-of-reach --target-frr is reported, metrics say which class is positive, bad .npz files
are refused up front with one line."""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os

import cv2
import numpy as np
import pytest

from edge.argtypes import MIN_SIDE_PX
from edge.core.bundle import load_bundle
from tests.support.broker import strict_json
from tests.support.helpers import MNIST_SMALL, run_cli
from trainer import metrics
from trainer.evaluate import ScoredSet
from trainer.report import write_pages
from trainer.train import TrainOptions, calibrate

EX_DATAERR = 65


def _smallest_n_by_brute_force(target_frr: float) -> int:
    n = 1
    while math.ceil((n + 1) * (1 - target_frr)) > n:
        n += 1
    return n


@pytest.mark.parametrize("target_frr, expected", [(0.01, 99), (0.05, 19), (0.1, 9), (0.3, 3), (0.5, 1), (0.001, 999)])
def test_min_good_for_target_is_exact(target_frr, expected):
    assert metrics.min_good_for_target(target_frr) == expected == _smallest_n_by_brute_force(target_frr)


@pytest.mark.parametrize("target_frr", [1 / 3, 0.07, 0.15, 0.2, 0.02, 0.99, 0.0123])
def test_min_good_for_target_agrees_with_the_rank_rule(target_frr):
    assert metrics.min_good_for_target(target_frr) == _smallest_n_by_brute_force(target_frr)


def test_reach_flips_exactly_at_the_minimum():
    assert metrics.good_quantile_reach(98, 0.01)["target_frr_reachable"] is False
    assert metrics.good_quantile_reach(99, 0.01) == {"target_frr_reachable": True, "min_good_for_target": 99}


def _good_only(n: int) -> ScoredSet:
    scores = np.linspace(1.0, 2.0, n)
    return ScoredSet([], scores, np.zeros(n, dtype=int), [], ["pass"] * n, [None] * n)


def _calibrate(n_good: int, target_frr: float):
    options = TrainOptions(threshold_method="good-quantile", target_frr=target_frr)
    return calibrate(options, _good_only(n_good), [np.zeros((4, 4))] * n_good)


def test_too_few_good_images_warn_and_keep_the_conservative_threshold(caplog):
    with caplog.at_level(logging.WARNING):
        calibration = _calibrate(20, 0.01)
    assert calibration.threshold > 2.0  # every calibration image passes
    stats = calibration.stats
    assert stats["target_frr_reachable"] is False and stats["min_good_for_target"] == 99
    assert "only 20 good calibration images" in stats["note"] and "at least 99" in stats["note"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "20" in warnings[0] and "99" in warnings[0] and "--target-frr" in warnings[0]


def test_enough_good_images_stay_quiet(caplog):
    with caplog.at_level(logging.WARNING):
        calibration = _calibrate(200, 0.01)
    assert calibration.stats["target_frr_reachable"] is True and "note" not in calibration.stats
    assert calibration.threshold < 2.0  # the top 1% of good scores fail
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_catch_and_pass_rates_use_plain_directions():
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.95])
    labels = np.array([0, 0, 0, 1, 1, 1])
    result = metrics.image_metrics(scores, labels, threshold=0.5)
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (2, 1, 1, 2)
    assert result["defect_catch_rate"] == pytest.approx(2 / 3)  # two of three defects fail
    assert result["good_pass_rate"] == pytest.approx(2 / 3)  # two of three good images pass
    only_good = metrics.image_metrics(scores[:3], labels[:3], threshold=0.5)
    assert only_good["defect_catch_rate"] is None and only_good["good_pass_rate"] == pytest.approx(2 / 3)


def _write_digits(path, train_classes, test_classes):
    rng = np.random.default_rng(0)
    y_train, y_test = np.repeat(train_classes, 5), np.repeat(test_classes, 5)
    np.savez(path, x_train=rng.integers(0, 255, (len(y_train), 28, 28), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 255, (len(y_test), 28, 28), dtype=np.uint8), y_test=y_test)
    return path


def _refused_before_training(tmp_path, data, *args):
    out = tmp_path / "models" / "x"
    result = run_cli("train", "--data", data, "--out", out, "--steps", "5", *args)
    assert result.returncode == EX_DATAERR, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "training a" not in result.stderr
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("height, width", [(1, 1), (7, 28), (28, 7)])
def test_images_smaller_than_the_models_can_use_are_refused_up_front(tmp_path, height, width):
    data = tmp_path / "tiny"
    (data / "train" / "good").mkdir(parents=True)
    cv2.imwrite(str(data / "train" / "good" / "only.png"), np.full((height, width), 128, np.uint8))
    line = _refused_before_training(tmp_path, data, "--val-fraction", "0")
    assert line == (f"lineguard train: MVTec-layout folder {data}: images of {width}x{height} pixels are too small; "
                    f"the models need at least {MIN_SIDE_PX}x{MIN_SIDE_PX}")


def test_anomaly_class_only_in_training_images_is_refused_up_front(tmp_path):
    data = _write_digits(tmp_path / "digits.npz", train_classes=[1, 7], test_classes=[1, 9])
    line = _refused_before_training(tmp_path, data, "--normal", "1", "--anomaly", "7")
    assert f"{data}: no test images of anomaly class 7 (x_test/y_test)" in line


def _random_bytes(path):
    path.write_bytes(os.urandom(512))


def _object_arrays(path):
    objects = np.array([{"a": 1}, None], dtype=object)
    np.savez(path, x_train=objects, y_train=objects, x_test=objects, y_test=objects)


def _damaged_zip(path):
    _write_digits(path, [1, 9], [1, 9])
    path.write_bytes(path.read_bytes()[:300])


def _bare_array(path):
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((3, 28, 28), np.uint8))


@pytest.mark.parametrize("make_bad, reason", [
    (_random_bytes, "not a zip archive of named arrays"),
    (_object_arrays, "x_train: object arrays, which need pickle and are never loaded"),
    (_damaged_zip, "not a zip archive of named arrays"),
    (_bare_array, "one bare array, not named arrays"),
])
def test_unreadable_npz_is_one_plain_line(tmp_path, make_bad, reason):
    data = tmp_path / "digits.npz"
    make_bad(data)
    line = _refused_before_training(tmp_path, data)
    assert line.startswith(f"lineguard train: {data}: not a readable .npz of images and labels (") and line.endswith(")")
    assert reason in line and "allow_pickle" not in line


def test_labels_not_matching_images_are_refused(tmp_path):
    data = tmp_path / "digits.npz"
    images = np.zeros((10, 28, 28), np.uint8)
    np.savez(data, x_train=images, y_train=np.ones(7, np.uint8), x_test=images, y_test=np.ones(10, np.uint8))
    line = _refused_before_training(tmp_path, data)
    assert f"{data}: y_train must hold one label per x_train image" in line


@pytest.fixture(scope="module")
def short_of_good_images(tmp_path_factory):
    """Good-quantile on 40 held-out good digits (the dense autoencoder does not refit, so it calibrates on a
    held-out share): fewer than the 99 that a 1% target needs."""
    out = tmp_path_factory.mktemp("models") / "few-good"
    result = run_cli("train", "--data", MNIST_SMALL, "--normal", "1", "--anomaly", "9", "--out", out,
                     "--model", "dense", "--steps", "30", "--threshold", "good-quantile", "--target-frr", "0.01",
                     "--val-fraction", "0.1")
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stderr


@pytest.mark.slow
def test_unreachable_target_shows_in_log_bundle_and_report(short_of_good_images):
    out, stderr = short_of_good_images
    assert any(" WARNING " in line and "only 40 good calibration images" in line and "at least 99" in line
               for line in stderr.splitlines())
    stats = strict_json((out / "model.json").read_text())["calibration"]["stats"]
    assert stats["target_frr_reachable"] is False and stats["min_good_for_target"] == 99
    assert "only 40 good calibration images" in stats["note"]
    readme = (out / "report" / "README.md").read_text()
    assert f"> **Warning:** {stats['note']}." in readme
    assert "<p class='warning'><strong>Warning:</strong> only 40 good calibration images" in (
        out / "report" / "index.html").read_text()


@pytest.mark.slow
def test_report_names_the_positive_class_and_the_rates_match_the_scores(short_of_good_images):
    out, _ = short_of_good_images
    result = strict_json((out / "report" / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "report" / "scores.csv").open()))
    failed = {label: [float(r["score"]) >= result["threshold"] for r in rows if r["label"] == label] for label in "01"}
    assert result["defect_catch_rate"] == pytest.approx(np.mean(failed["1"]))
    assert result["good_pass_rate"] == pytest.approx(1 - np.mean(failed["0"]))
    readme = (out / "report" / "README.md").read_text()
    assert f"| defect images | defects caught: {result['tp']} (tp) | defects passed: {result['fn']} (fn) |" in readme
    assert f"| good images | good rejected: {result['fp']} (fp) | good passed: {result['tn']} (tn) |" in readme
    assert "| precision (positive class: good, as the study counted) | precision |" in readme
    assert "| defect catch rate: share of defect images that fail | defect_catch_rate |" in readme
    assert "good passed: " in (out / "report" / "index.html").read_text()


@pytest.mark.slow
def test_report_has_no_warning_when_the_target_was_reachable(short_of_good_images, tmp_path):
    out, _ = short_of_good_images
    bundle = load_bundle(out)
    stats = {k: v for k, v in bundle.calibration.stats.items() if k != "note"}
    bundle.calibration = dataclasses.replace(bundle.calibration, stats={**stats, "target_frr_reachable": True})
    result = strict_json((out / "report" / "metrics.json").read_text())
    write_pages(tmp_path, bundle, result, [])
    assert "Warning" not in (tmp_path / "README.md").read_text()
    assert "class='warning'" not in (tmp_path / "index.html").read_text()


def test_large_frames_reach_the_features_model_at_a_larger_input():
    from trainer.data import Dataset
    from trainer.train import default_size

    def sized(*sizes):
        return Dataset([], [], "gray", "parts", set(sizes))

    assert default_size(sized((512, 512)), "features") == (320, 320)  # screw: small defects on a large frame
    assert default_size(sized((1024, 1024)), "features") == (320, 320)
    assert default_size(sized((1024, 1024), (300, 400)), "features") == (224, 224)  # not every frame is large
    assert default_size(sized((388, 617)), "features") == (224, 224)  # magnetic-tile crops
