"""The `features` kind: trained through the CLI on a few real magnetic-tile crops, scored by the device's code."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from edge.core.bundle import MANIFEST_NAME, BundleError, sha256_of
from edge.kinds.features.heads import HEAD_FILE
from edge.core.inspector import Inspector
from tests.support.helpers import FIXTURES, ROOT, run_cli

TILES = FIXTURES / "magnetic-tile"
BUNDLE_LIMIT_BYTES = 16_000_000
SHIPPED = ROOT / "models" / "magnetic-tile"


@pytest.fixture(scope="module")
def features_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiles"
    result = run_cli("train", "--data", TILES, "--out", out)  # defaults: the kind and head choose themselves
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


def _bundle_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())  # the report included


def test_default_on_ordinary_images_is_features_and_the_log_says_why(features_bundle):
    out, log = features_bundle
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "features" and manifest["architecture"]["kind"] == "features"
    head = manifest["architecture"]["head"]
    assert head["type"] in ("padim", "patchcore") and head["sha256"] == sha256_of(out / HEAD_FILE)
    assert head["choice"]["reason"].startswith(head["type"])
    assert f"head: {head['choice']['reason']}" in log
    assert "every image is resized to 224x224" in log  # the crops come in many sizes
    assert manifest["preprocess"]["height"] == manifest["preprocess"]["width"] == 224


def test_score_equals_evaluate_bit_for_bit(features_bundle, tmp_path):
    out, _ = features_bundle
    report = tmp_path / "report"
    result = run_cli("evaluate", "--model", out, "--data", TILES, "--out", report)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((report / "scores.csv").open()))
    assert len(rows) == 10
    scored = run_cli("score", "--model", out, *[TILES / row["image"] for row in rows])
    assert scored.returncode == 0, scored.stderr[-2000:]
    lines = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [line["score"] for line in lines] == [float(row["score"]) for row in rows]
    assert [line["verdict"] for line in lines] == [row["verdict"] for row in rows]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is not None and abs(metrics["parity"]["auroc_delta"]) <= 0.05


def test_a_tampered_head_file_stops_the_bundle(features_bundle, tmp_path):
    bundle = shutil.copytree(features_bundle[0], tmp_path / "bundle")
    data = bytearray((bundle / HEAD_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / HEAD_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"head\.npz: sha256 .* does not match model\.json"):
        Inspector(bundle)


def test_a_non_finite_head_is_refused_even_with_a_matching_hash(features_bundle, tmp_path):
    bundle = shutil.copytree(features_bundle[0], tmp_path / "bundle")
    with np.load(bundle / HEAD_FILE) as archive:
        arrays = {name: archive[name] for name in archive.files}
    name = "mean" if "mean" in arrays else "bank"
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.nan
    with open(bundle / HEAD_FILE, "wb") as handle:
        np.savez(handle, **arrays)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["architecture"]["head"]["sha256"] = sha256_of(bundle / HEAD_FILE)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"array '{name}' holds a non-finite number"):
        Inspector(bundle)


def test_the_head_file_is_part_of_the_model_identity(features_bundle):
    from edge.core.bundle import load_bundle

    bundle = load_bundle(features_bundle[0])
    before = bundle.model_sha256
    bundle.architecture["head"]["sha256"] = "0" * 64
    assert bundle.model_sha256 != before


def test_patchcore_head_trains_and_scores(tmp_path):
    out = tmp_path / "patchcore"
    result = run_cli("train", "--data", TILES, "--out", out, "--model", "features", "--head", "patchcore",
                     "--size", "96")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["architecture"]["head"]["type"] == "patchcore"
    inspection = Inspector(out).inspect_file(next((TILES / "test" / "blowhole").glob("*.jpg")))
    assert np.isfinite(inspection.score) and inspection.heat.shape == (96, 96)
    with np.load(out / HEAD_FILE) as shipped:  # which training image each entry came from stays with the trainer
        assert sorted(shipped.files) == ["bank", "channels", "positions"]


def test_patchcore_leaves_a_folds_images_out_of_its_bank_without_a_new_coreset():
    from edge.kinds.features.heads import HeadFit, fit_head
    from edge.kinds.features.heads.patchcore import SOURCE_IMAGES, PatchcoreHead

    features = np.random.default_rng(0).normal(size=(12, 16, 8)).astype(np.float32)
    arrays, _, _ = fit_head("patchcore", features, HeadFit(grid=(4, 4)))
    assert arrays[SOURCE_IMAGES].shape == (arrays["bank"].shape[0],)
    dropped = np.array([0, 5])
    fewer = PatchcoreHead.without_images(arrays, dropped)
    assert not np.isin(fewer[SOURCE_IMAGES], dropped).any()
    kept_bank = [tuple(row) for row in fewer["bank"].astype(np.float32)]
    from_others = features[~np.isin(np.arange(12), dropped)].reshape(-1, 8).astype(np.float16).astype(np.float32)
    assert {tuple(row) for row in from_others} >= set(kept_bank)


def test_bundles_stay_within_the_size_limit(features_bundle):
    assert _bundle_bytes(features_bundle[0]) <= BUNDLE_LIMIT_BYTES
    assert _bundle_bytes(SHIPPED) <= BUNDLE_LIMIT_BYTES


def test_shipped_backbone_is_the_one_its_readme_describes():
    backbone = ROOT / "models" / "backbones" / "mobilenet_v2_cut.tflite"
    readme = (backbone.parent / "README.md").read_text()
    assert f"`{sha256_of(backbone)}`" in readme
    license_head = (backbone.parent / "LICENSE").read_text()[:300]
    assert "Apache License" in license_head and "Version 2.0" in license_head


def test_backbone_script_cuts_resizes_and_dequantizes(tmp_path):
    from edge.core.runtime import TFLiteStage
    from trainer import backbones

    shipped = backbones.backbone_path().read_bytes()
    assert backbones.cut(shipped) == shipped  # cutting again at the same layers changes nothing
    sized = backbones.with_input_size(shipped, 160, 96)
    (tmp_path / "int8.tflite").write_bytes(sized)
    (tmp_path / "float.tflite").write_bytes(backbones.float_twin(sized))
    int8, float_ = TFLiteStage(tmp_path / "int8.tflite"), TFLiteStage(tmp_path / "float.tflite")
    assert int8.output_shape == (1, 20, 12, 32) and int8.extra_outputs[0][1] == (10, 6, 96)
    assert float_.input_dtype == np.float32 and float_.output_shape == int8.output_shape
    pixels = np.random.default_rng(0).integers(0, 256, (160, 96, 3), dtype=np.uint8)
    real = (pixels.astype(np.float32) - int8.input_zero) * np.float32(int8.input_scale)
    for quantized, floating in zip(int8.run_all(real), float_.run_all(real)):
        assert np.corrcoef(quantized.ravel(), floating.ravel())[0, 1] > 0.99


def test_padim_blocks_score_as_per_position_precisions_would():
    """A covariance shared by each 2x2 block gives the distances of the same precision repeated per position."""
    from edge.kinds.features.heads import PadimHead, cell_order

    rng = np.random.default_rng(0)
    grid, channels = (6, 4), 5
    mean = rng.normal(size=(24, channels)).astype(np.float32)
    factors = rng.normal(size=(6, channels, channels))
    precision = (factors @ factors.transpose(0, 2, 1)).astype(np.float32)
    block_of = np.empty(24, int)
    block_of[cell_order(grid, 2)] = np.repeat(np.arange(6), 4)
    blocked = PadimHead(np.arange(channels), mean, precision, grid, 2)
    per_position = PadimHead(np.arange(channels), mean, precision[block_of])
    features = rng.normal(size=(24, channels)).astype(np.float32)
    np.testing.assert_allclose(blocked.distances(features), per_position.distances(features), rtol=1e-5)
