"""The bundle format: kinds and stages, format 1 bundles still read, stages run in order."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from edge import kinds
from edge.core.bundle import MANIFEST_NAME, Bundle, Stage, load_bundle, save_manifest, sha256_of
from edge.core.inspector import Inspector
from edge.kinds import _template
from edge.core.preprocess import PreprocessSpec, read_image
from edge.core.runtime import ModelLoadError, StageChain
from edge.core.scoring import Calibration, ScoringSpec
from tests.support.helpers import FIXTURES, MNIST_BUNDLE, ROOT, SAMPLES

FORMAT1 = FIXTURES / "format1"
PARTS = FIXTURES / "parts" / "test"


def format1_copy(tmp_path, bundle_dir, manifest_name):
    """The shipped bundle's model files under the manifest it had in format 1."""
    old = shutil.copytree(bundle_dir, tmp_path / bundle_dir.name, ignore=shutil.ignore_patterns("report"))
    shutil.copy(FORMAT1 / manifest_name, old / MANIFEST_NAME)
    return old


def assert_same_inspections(old_dir, new_dir, images):
    old, new = Inspector(old_dir), Inspector(new_dir)
    assert old.bundle.model_sha256 == new.bundle.model_sha256
    for path in images:
        a, b = old.inspect_file(path), new.inspect_file(path)
        assert (a.score, a.score_norm, a.verdict, a.regions, a.reason) == (b.score, b.score_norm, b.verdict,
                                                                           b.regions, b.reason), path
        assert np.array_equal(a.heat, b.heat), path


def test_format1_autoencoder_bundle_loads_and_scores_like_format2(tmp_path):
    old = format1_copy(tmp_path, MNIST_BUNDLE, "mnist-1.model.json")
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 1 and "kind" not in manifest
    bundle = load_bundle(old, verify_float=True)
    assert bundle.kind == "autoencoder" and len(bundle.stages) == 1
    assert bundle.model_sha256 == manifest["model"]["sha256"]
    assert bundle.stages[0].float_sha256 == manifest["float_model"]["sha256"]
    assert_same_inspections(old, MNIST_BUNDLE, sorted(SAMPLES.glob("*.png")))


def test_format1_segmenter_bundle_loads_and_scores_like_format2(tmp_path):
    shipped = ROOT / "models" / "magnetic-tile-seg"
    old = format1_copy(tmp_path, shipped, "magnetic-tile-seg.model.json")
    bundle = load_bundle(old)
    assert bundle.kind == "segmenter" and bundle.scoring.residual is None
    images = sorted(PARTS.glob("*/*.png"))[:6]
    assert_same_inspections(old, shipped, images)


def test_shipped_bundles_are_format2_with_their_kind():
    kinds = {"mnist-1": "autoencoder", "magnetic-tile-ae": "autoencoder", "magnetic-tile-seg": "segmenter"}
    for name, kind in kinds.items():
        manifest = json.loads((ROOT / "models" / name / MANIFEST_NAME).read_text())
        assert manifest["format_version"] == 2 and manifest["kind"] == kind
        assert [s["file"] for s in manifest["stages"]] == ["model.tflite"]
        assert manifest["stages"][0]["sha256"] == sha256_of(ROOT / "models" / name / "model.tflite")


def test_unknown_kind_is_refused_in_one_line(tmp_path):
    bundle = shutil.copytree(MNIST_BUNDLE, tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["kind"] = "oracle"
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="model kind 'oracle' is not known"):
        Inspector(bundle)


def test_stage_file_must_stay_inside_the_bundle(tmp_path):
    bundle = shutil.copytree(MNIST_BUNDLE, tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["stages"][0]["file"] = "../model.tflite"
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="plain file name"):
        load_bundle(bundle)


# ---------------------------------------------------------------- two stages, through the template kind

SIDE = 32
STRIDE = 8


def two_stage_models():
    """A stride-8 "backbone" and a 1x1 "head", and the same two layers as one Keras model for reference."""
    import tensorflow as tf

    from trainer.quantize import float_tflite

    tf.keras.utils.set_random_seed(3)
    backbone = tf.keras.Sequential([tf.keras.Input((SIDE, SIDE, 1)), tf.keras.layers.Conv2D(8, STRIDE, strides=STRIDE)])
    head = tf.keras.Sequential([tf.keras.Input((SIDE // STRIDE, SIDE // STRIDE, 8)),
                                tf.keras.layers.Conv2D(_template.FEATURE_CHANNELS, 1, activation="relu")])
    return float_tflite(backbone), float_tflite(head), lambda x: head(backbone(x)).numpy()


def test_a_two_stage_bundle_runs_its_stages_in_order(tmp_path, monkeypatch):
    backbone_bytes, head_bytes, reference = two_stage_models()
    folder = tmp_path / "two-stage"
    folder.mkdir()
    (folder / "backbone.tflite").write_bytes(backbone_bytes)
    (folder / "head.tflite").write_bytes(head_bytes)
    bundle = Bundle(
        path=folder, name="two-stage", kind=_template.FeatureNormPipeline.kind,
        stages=[Stage("backbone.tflite", quantization="float"), Stage("head.tflite", quantization="float")],
        preprocess=PreprocessSpec(color="gray", height=SIDE, width=SIDE),
        scoring=ScoringSpec(residual=None, reducer="max"), calibration=Calibration(threshold=1.0),
    )
    save_manifest(bundle)
    monkeypatch.setitem(kinds.PIPELINES, _template.FeatureNormPipeline.kind, _template.FeatureNormPipeline)
    inspector = Inspector(folder, quality_gate=False)
    assert len(inspector.pipeline.chain.stages) == 2
    sha = [sha256_of(folder / "backbone.tflite"), sha256_of(folder / "head.tflite")]
    assert inspector.bundle.model_sha256 not in sha and len(inspector.bundle.model_sha256) == 64

    image = cv2.resize(read_image(next(SAMPLES.glob("*digit9.png")), "gray"), (SIDE, SIDE))
    result = inspector.inspect(image)
    features = reference(image.reshape(1, SIDE, SIDE, 1).astype(np.float32) / 255.0)[0]
    expected = cv2.resize(np.sqrt(np.square(features).sum(axis=-1)).astype(np.float32), (SIDE, SIDE),
                          interpolation=cv2.INTER_LINEAR)
    assert result.heat.shape == (SIDE, SIDE)
    np.testing.assert_allclose(result.heat, expected, rtol=1e-4, atol=1e-5)
    assert result.score == pytest.approx(float(expected.max()), rel=1e-4)


def test_stages_that_do_not_fit_together_are_refused(tmp_path):
    model = MNIST_BUNDLE / "model.tflite"
    backbone_bytes, _, _ = two_stage_models()
    (tmp_path / "backbone.tflite").write_bytes(backbone_bytes)
    with pytest.raises(ModelLoadError, match="backbone.tflite: takes"):
        StageChain([model, tmp_path / "backbone.tflite"])


def test_the_trainer_template_makes_a_bundle_the_device_runs(tmp_path):
    from trainer.kinds import _template as template
    from trainer.train import TrainOptions

    options = TrainOptions(model="pixel-example", steps=3, batch_size=4, learning_rate=1e-3)
    x_train = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    model = template.fit(options, x_train)
    bundle = Bundle(
        path=tmp_path, name="template", kind="autoencoder", stages=template.export(model, x_train, tmp_path, 0),
        preprocess=PreprocessSpec(color="gray", height=8, width=8), scoring=ScoringSpec(),
        calibration=Calibration(threshold=1.0), architecture=template.architecture(options, model),
    )
    save_manifest(bundle)
    result = Inspector(tmp_path, quality_gate=False).inspect((x_train[0, ..., 0] * 255).astype(np.uint8))
    assert result.heat.shape == (8, 8) and result.score > 0
