"""Small images: the global knn head on pooled backbone features, and the measured default between the study's
autoencoder and the features heads, trained through the CLI on the committed MNIST cut."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge.core.bundle import MANIFEST_NAME
from edge.core.inspector import Inspector
from tests.support.helpers import MNIST_SMALL, evaluated_digits_as_png, run_cli

DIGITS = ("--data", MNIST_SMALL, "--normal", "1", "--anomaly", "9")


@pytest.fixture(scope="module")
def knn_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "digits-knn"
    result = run_cli("train", *DIGITS, "--out", out, "--model", "features", "--head", "knn")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_knn_head_on_small_images_enlarges_them_and_separates_the_digits(knn_bundle):
    manifest = json.loads((knn_bundle / MANIFEST_NAME).read_text())
    head = manifest["architecture"]["head"]
    assert head["type"] == "knn" and head["neighbours"] == 2 and head["channels_kept"] == 96
    assert manifest["preprocess"]["height"] == manifest["preprocess"]["width"] == 56  # 28 px, enlarged twice
    metrics = json.loads((knn_bundle / "report" / "metrics.json").read_text())
    assert metrics["image_auroc"] > 0.9 and abs(metrics["parity"]["auroc_delta"]) <= 0.02


def test_knn_score_equals_evaluate_bit_for_bit(knn_bundle, tmp_path):
    report = tmp_path / "report"
    result = run_cli("evaluate", "--model", knn_bundle, *DIGITS, "--out", report)
    assert result.returncode == 0, result.stderr[-2000:]
    picks, paths = evaluated_digits_as_png(report, tmp_path)
    scored = run_cli("score", "--model", knn_bundle, *paths)
    assert scored.returncode == 0, scored.stderr[-2000:]
    lines = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [line["score"] for line in lines] == [float(row["score"]) for row in picks]
    assert [line["verdict"] for line in lines] == [row["verdict"] for row in picks]
    heat = Inspector(knn_bundle).inspect_file(paths[0]).heat
    assert np.ptp(heat) == 0  # one distance per image: the map is flat


def test_default_for_small_images_is_measured_between_autoencoder_and_features(tmp_path):
    out = tmp_path / "digits"
    result = run_cli("train", *DIGITS, "--out", out, "--steps", "100")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    choice = manifest["architecture"]["model_choice"]
    measured = choice["auroc_on_synthetic"]
    assert {"dense", "features/knn"} == set(measured)  # whole-image models only, for small images
    winner = max(measured, key=measured.get)
    assert choice["reason"].startswith(winner) and f"model: {choice['reason']}" in result.stderr
    assert manifest["kind"] == ("autoencoder" if winner == "dense" else "features")
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["model_choice"] == choice["reason"]
