"""Preprocessing, scoring, calibration maths and bundle reading: the code the trainer and the device share."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.core import scoring
from edge.core.bundle import BundleError, load_bundle
from edge.core.inspector import Inspector
from edge.core.preprocess import ImageError, PreprocessSpec, preprocess, read_image, scale
from edge.core.scoring import Calibration, ScoringSpec
from tests.support.helpers import MNIST_BUNDLE, SAMPLES


def test_scaling_follows_dtype_not_image_maximum():
    dark = np.full((4, 4), 10, dtype=np.uint8)
    assert np.allclose(scale(dark), 10 / 255)
    assert np.allclose(scale(np.full((2, 2), 65535, dtype=np.uint16)), 1.0)


def test_preprocess_colour_roi_and_resize():
    frame = np.zeros((40, 60, 3), dtype=np.uint8)
    frame[10:20, 30:50] = (0, 0, 255)  # red in BGR
    spec = PreprocessSpec(color="gray", height=5, width=10, roi=(30, 10, 20, 10))
    x = preprocess(frame, spec, bgr=True)
    assert x.shape == (5, 10, 1) and x.dtype == np.float32
    assert np.allclose(x, 0.299 * 1.0, atol=0.01)  # red's luma weight


def test_roi_outside_frame_is_an_error():
    with pytest.raises(ImageError, match="outside"):
        preprocess(np.zeros((10, 10), np.uint8), PreprocessSpec(height=4, width=4, roi=(5, 5, 10, 10)))


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        read_image(bad, "gray")


@pytest.mark.parametrize("residual", ["l1", "l2", "ssim"])
def test_identical_images_have_zero_residual(residual):
    x = np.random.default_rng(0).uniform(size=(16, 16, 1)).astype(np.float32)
    heat = scoring.residual_map(x, x.copy(), ScoringSpec(residual=residual))
    assert heat.shape == (16, 16)
    assert np.abs(heat).max() < 1e-4


def test_residual_l1_is_the_study_score():
    x = np.zeros((4, 4, 1), np.float32)
    y = np.full((4, 4, 1), 0.25, np.float32)
    heat = scoring.residual_map(x, y, ScoringSpec())
    assert scoring.image_score(heat, ScoringSpec(reducer="sum")) == pytest.approx(16 * 0.25)


def test_reducers():
    heat = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert scoring.image_score(heat, ScoringSpec(reducer="max")) == 99
    assert scoring.image_score(heat, ScoringSpec(reducer="mean")) == pytest.approx(49.5)
    assert scoring.image_score(heat, ScoringSpec(reducer="topk", topk_fraction=0.05)) == pytest.approx(97)
    ignore = heat >= 90
    assert scoring.image_score(heat, ScoringSpec(reducer="max"), ignore) == 89


def test_normalized_score_is_one_half_at_the_threshold():
    cal = Calibration(threshold=21.7, score_min=3.0, score_max=180.0)
    assert scoring.normalize_score(21.7, cal) == 0.5
    assert scoring.normalize_score(3.0, cal) < 0.5 < scoring.normalize_score(40.0, cal)
    assert scoring.normalize_score(1e9, cal) == 1.0


def test_regions_are_boxes_in_source_pixels():
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 5:8] = 1.0
    regions = scoring.anomalous_regions(heat, 0.5, min_area_px=1, scale_xy=(2.0, 2.0), offset_xy=(100, 0))
    assert regions == [{"x": 110, "y": 4, "w": 6, "h": 4, "area_px": 6, "peak": 1.0}]


def test_heat_colour_scale_is_anchored_to_the_threshold():
    low = scoring.heat_colors(np.full((1, 1), 0.1, np.float32), 0.1)
    high = scoring.heat_colors(np.full((1, 1), 1.0, np.float32), 1.0)
    assert np.array_equal(low, high)  # at the threshold, the same colour whatever the scale


def test_bundled_model_loads_and_scores_sample_frames():
    inspector = Inspector(MNIST_BUNDLE)
    model = inspector.pipeline.chain.stages[0]
    assert model.input_dtype == np.uint8 and model.takes_raw_uint8
    one = inspector.inspect_file(next(SAMPLES.glob("*digit1.png")))
    nine = inspector.inspect_file(next(SAMPLES.glob("*digit9.png")))
    assert one.verdict == "pass" and nine.verdict == "fail"
    assert nine.regions and one.regions == []


def test_raw_uint8_shortcut_gives_the_same_reconstruction():
    inspector = Inspector(MNIST_BUNDLE)
    pixels = read_image(next(SAMPLES.glob("*digit9.png")), "gray").reshape(28, 28, 1)
    x = scale(pixels)
    fast = inspector.pipeline.chain.run(x, pixels=pixels)
    slow = inspector.pipeline.chain.run(x)
    assert np.array_equal(fast, slow)


def _copy_bundle(tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(MNIST_BUNDLE, target)
    return target


def test_truncated_model_is_refused_by_hash(tmp_path):
    bundle = _copy_bundle(tmp_path)
    data = (bundle / "model.tflite").read_bytes()
    (bundle / "model.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"model\.tflite: sha256 .* does not match"):
        load_bundle(bundle)


def test_mismatched_shapes_are_refused(tmp_path):
    bundle = _copy_bundle(tmp_path)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["preprocess"]["height"] = manifest["preprocess"]["width"] = 32
    manifest["input"]["shape"] = [1, 32, 32, 1]
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="promises"):
        Inspector(bundle)


def test_unknown_format_version_is_refused(tmp_path):
    bundle = _copy_bundle(tmp_path)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["format_version"] = 99
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bundle)


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")


def test_ignore_mask_removes_pixels_from_the_score():
    image = read_image(next(SAMPLES.glob("*digit9.png")), "gray")
    everything = np.full((28, 28), 255, np.uint8)
    masked = Inspector(MNIST_BUNDLE, ignore_mask=everything).inspect(image)
    assert masked.score == 0.0 and masked.verdict == "pass"


def test_frame_roi_crops_before_the_model():
    digit = read_image(next(SAMPLES.glob("*digit9.png")), "gray")
    canvas = np.zeros((100, 100), np.uint8)
    canvas[50:78, 20:48] = digit
    plain = Inspector(MNIST_BUNDLE).inspect(digit)
    cropped = Inspector(MNIST_BUNDLE, roi=(20, 50, 28, 28)).inspect(canvas)
    assert cropped.score == plain.score
    assert cropped.regions[0]["x"] >= 20 and cropped.regions[0]["y"] >= 50
