"""The trainer end to end on small committed data, and every bad input it must refuse cleanly."""
from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.support.broker import strict_json
from tests.support.helpers import MNIST_SMALL, evaluated_digits_as_png, make_mvtec, run_cli
from trainer import metrics

pytestmark = pytest.mark.slow

METRIC_KEYS = {"image_auroc", "average_precision", "f1", "precision", "recall", "threshold", "tp", "fp", "tn", "fn",
               "parity"}


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory):
    """A dense bundle trained briefly on the committed MNIST cut, through the real CLI."""
    out = tmp_path_factory.mktemp("models") / "small-1"
    result = run_cli("train", "--data", MNIST_SMALL, "--normal", "1", "--anomaly", "9", "--out", out,
                     "--model", "dense", "--steps", "300", "--val-fraction", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_bundle_contents_and_report(mnist_bundle):
    names = {p.name for p in mnist_bundle.iterdir()}
    assert {"model.tflite", "model_float.tflite", "model.json", "report"} <= names
    report = mnist_bundle / "report"
    for name in ("metrics.json", "histogram.png", "curves.png", "examples.png", "index.html", "README.md", "scores.csv"):
        assert (report / name).stat().st_size > 0, name
    result = strict_json((report / "metrics.json").read_text())
    assert METRIC_KEYS <= result.keys()
    assert result["image_auroc"] > 0.9  # 300 steps on 400 images already separate 1s from 9s
    manifest = strict_json((mnist_bundle / "model.json").read_text())
    assert manifest["calibration"]["method"] == "best_f1"
    assert manifest["provenance"]["data_fingerprint"]
    assert manifest["input"]["shape"] == [1, 28, 28, 1]
    # The drift watch's reference (edge.core.reference): the calibration's good scores (best-F1: the labelled test
    # set's good images) and the training images' figures, as quantiles from 0 to 100 %.
    reference = manifest["reference"]
    assert reference["scores"]["source"] == "labelled test set's good images" and reference["scores"]["n"] > 10
    assert len(reference["scores"]["quantiles"]) == 101 and reference["scores"]["quantiles"] == sorted(
        reference["scores"]["quantiles"])
    assert set(reference["image"]) == {"brightness", "contrast", "sharpness"}
    assert {figure["source"] for figure in reference["image"].values()} == {"training images"}
    assert reference["image"]["brightness"]["n"] == manifest["provenance"]["train_images"]


def test_int8_threshold_and_parity(mnist_bundle):
    result = strict_json((mnist_bundle / "report" / "metrics.json").read_text())
    parity = result["parity"]
    assert abs(parity["auroc_delta"]) <= 0.01
    assert parity["verdict_agreement"] >= 0.95
    # the shipped threshold is the best-F1 point of the int8 model's own scores
    assert result["threshold"] == pytest.approx(result["best_f1"]["threshold"])


def test_score_cli_matches_evaluate_exactly(mnist_bundle, tmp_path):
    """`lineguard score` on PNG files gives exactly the score `lineguard evaluate` computed, with no TensorFlow."""
    report = tmp_path / "report"
    result = run_cli("evaluate", "--model", mnist_bundle, "--data", MNIST_SMALL, "--out", report)
    assert result.returncode == 0, result.stderr[-2000:]
    picks, paths = evaluated_digits_as_png(report, tmp_path)
    probe = ("import sys; sys.argv = ['lineguard', 'score', '--model', %r] + %r; "
             "from edge.cli import main; code = main(); "
             "assert 'tensorflow' not in sys.modules, 'score imported tensorflow'; sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", probe % (str(mnist_bundle), [str(p) for p in paths])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [strict_json(line) for line in out.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    for line, row in zip(lines, picks):
        assert line["score"] == float(row["score"])
        assert line["verdict"] == row["verdict"]


def test_conv_autoencoder_on_mvtec_layout_with_masks(tmp_path):
    data = make_mvtec(tmp_path / "parts", color=True)
    out = tmp_path / "models" / "parts"
    result = run_cli("train", "--data", data, "--out", out, "--model", "conv", "--steps", "40", "--size", "32",
                     "--residual", "l2", "--smoothing", "1", "--reducer", "max")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = strict_json((out / "model.json").read_text())
    assert manifest["architecture"]["kind"] == "conv" and manifest["kind"] == "autoencoder"
    assert manifest["preprocess"]["color"] == "rgb"
    assert manifest["calibration"]["method"] == "good_quantile"
    result = strict_json((out / "report" / "metrics.json").read_text())
    assert result["pixel_auroc"] is not None and result["pro"] is not None
    assert 0 <= result["false_reject_rate_ci95"][0] <= result["false_reject_rate_ci95"][1] <= 1


def test_default_for_larger_images_is_features_and_the_segmenter_stays_by_option(tmp_path):
    data = make_mvtec(tmp_path / "parts", n_train=12, n_good=4, n_bad=4)
    out = tmp_path / "models" / "parts"
    result = run_cli("train", "--data", data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = strict_json((out / "model.json").read_text())
    assert manifest["kind"] == "features" and manifest["input"]["shape"] == [1, 224, 224, 1]
    out = tmp_path / "models" / "seg"
    result = run_cli("train", "--data", data, "--out", out, "--model", "segmenter", "--steps", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = strict_json((out / "model.json").read_text())
    assert manifest["architecture"]["kind"] == "segmenter"
    assert manifest["input"]["shape"] == [1, 128, 128, 1]  # 64-px parts: above the dense model's 32 px
    assert manifest["kind"] == "segmenter" and manifest["scoring"]["reducer"] == "max"  # the model outputs its map
    assert manifest["scoring"]["residual"] is None
    metrics = strict_json((out / "report" / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is not None


def _assert_refused(result, *needles, out=None):
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message
    assert "Traceback" not in result.stderr
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.glob(f".{out.name}*")] if out.parent.exists() else True


def test_missing_folder(tmp_path):
    out = tmp_path / "models" / "x"
    _assert_refused(run_cli("train", "--data", tmp_path / "nope", "--out", out), "nope", "no such", out=out)


def test_empty_training_folder(tmp_path):
    (tmp_path / "data" / "train" / "good").mkdir(parents=True)
    out = tmp_path / "models" / "x"
    _assert_refused(run_cli("train", "--data", tmp_path / "data", "--out", out), "train/good", "no images", out=out)


def test_unreadable_image(tmp_path):
    data = make_mvtec(tmp_path / "parts", n_train=6, n_good=2, n_bad=2)
    (data / "train" / "good" / "003.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "models" / "x"
    _assert_refused(run_cli("train", "--data", data, "--out", out, "--steps", "5"), "003.png", "not a readable image", out=out)


def test_mixed_sizes_are_resized_to_the_model_input_and_the_log_says_so(tmp_path):
    data = make_mvtec(tmp_path / "parts", n_train=6, n_good=2, n_bad=2)
    cv2.imwrite(str(data / "train" / "good" / "big.png"), np.zeros((80, 96), np.uint8))
    out = tmp_path / "models" / "x"
    result = run_cli("train", "--data", data, "--out", out, "--model", "conv", "--steps", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images of 2 sizes (64x64, 96x80, ...): every image is resized to 128x128" in result.stderr
    assert strict_json((out / "model.json").read_text())["input"]["shape"] == [1, 128, 128, 1]


def test_npz_without_the_requested_class(tmp_path):
    out = tmp_path / "models" / "x"
    _assert_refused(run_cli("train", "--data", MNIST_SMALL, "--normal", "1", "--anomaly", "4", "--out", out),
                    "mnist-small.npz", "class 4 not found", out=out)


def test_corrupt_bundle_for_score_and_evaluate(mnist_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mnist_bundle, broken)
    (broken / "model.tflite").write_bytes(b"\x00" * 100)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((28, 28), np.uint8))
    _assert_refused(run_cli("score", "--model", broken, image), "model.tflite", "sha256")
    report = tmp_path / "report"
    _assert_refused(run_cli("evaluate", "--model", broken, "--data", MNIST_SMALL, "--out", report), "sha256", out=report)


def test_existing_bundle_survives_a_failed_training(mnist_bundle, tmp_path):
    out = tmp_path / "keep"
    shutil.copytree(mnist_bundle, out)
    before = (out / "model.json").read_text()
    result = run_cli("train", "--data", MNIST_SMALL, "--normal", "1", "--anomaly", "4", "--out", out)
    assert result.returncode != 0
    assert (out / "model.json").read_text() == before


def test_best_f1_threshold_counts_normal_as_positive():
    scores = np.array([1, 2, 3, 10, 11, 12.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold, figures = metrics.best_f1_threshold(scores, labels)
    assert 3 < threshold <= 10 and figures["f1"] == 1.0


def test_good_quantile_threshold_and_interval():
    good = np.arange(1, 1001, dtype=float)
    threshold = metrics.good_quantile_threshold(good, 0.01)
    assert np.mean(good >= threshold) <= 0.01
    low, high = metrics.clopper_pearson(10, 1000)
    assert low < 0.01 < high
