"""The image-quality gate and the ignore masks: the same on the trainer's side and the device's."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from edge.core.inspector import Inspector
from edge.core.preprocess import read_image
from tests.support.broker import strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import FIXTURES, run_cli

PARTS = FIXTURES / "parts"
POLYGON = [[0, 0], [40, 0], [40, 30], [0, 30]]  # frame pixels, top-left of a 64x64 part


@pytest.fixture(scope="module")
def parts_bundle(tmp_path_factory):
    """A small conv bundle on the committed synthetic parts, with an ignore polygon in its training spec (named:
    the default for such images is the features kind, whose max-reduced score the polygon need not move)."""
    out = tmp_path_factory.mktemp("models") / "parts"
    result = run_cli("train", "--data", PARTS, "--out", out, "--model", "conv", "--steps", "30", "--size", "32",
                     "--ignore-polygons", json.dumps([POLYGON]))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def good_image():
    return read_image(next((PARTS / "test" / "good").glob("*.png")), "gray")


@pytest.mark.slow
@pytest.mark.parametrize("spoil, reason", [
    (lambda im: cv2.GaussianBlur(im, (0, 0), 4), "blurred"),
    (lambda im: np.full_like(im, 255), "blank"),
    (lambda im: np.clip(im.astype(int) + 150, 0, 255).astype(np.uint8), "overexposed"),
    (lambda im: (im * 0.35).astype(np.uint8), "underexposed"),
    (lambda im: np.zeros_like(im), "blank"),
])
def test_quality_gate_refuses_bad_frames_with_a_reason(parts_bundle, spoil, reason):
    inspector = Inspector(parts_bundle)
    assert inspector.inspect(good_image()).verdict != "unscorable"
    result = inspector.inspect(spoil(good_image()))
    assert result.verdict == "unscorable"
    assert result.reason.startswith(reason), result.reason
    assert Inspector(parts_bundle, quality_gate=False).inspect(spoil(good_image())).verdict != "unscorable"


@pytest.mark.slow
def test_quality_gate_passes_every_test_image_of_the_fixture(parts_bundle):
    inspector = Inspector(parts_bundle)
    for path in sorted((PARTS / "test").rglob("*.png")):
        assert inspector.inspect_file(path).verdict != "unscorable", path


@pytest.mark.slow
def test_ignore_polygons_apply_identically_from_bundle_or_config(parts_bundle, tmp_path):
    defect = sorted((PARTS / "test" / "scratch").glob("*.png"))[0]
    from_bundle = Inspector(parts_bundle).inspect_file(defect)
    plain = tmp_path / "plain"
    shutil.copytree(parts_bundle, plain)
    manifest = json.loads((plain / "model.json").read_text())
    assert manifest["ignore"]["polygons"] == [POLYGON]
    manifest["ignore"]["polygons"] = []
    (plain / "model.json").write_text(json.dumps(manifest))
    from_config = Inspector(plain, ignore_polygons=[POLYGON]).inspect_file(defect)
    unmasked = Inspector(plain).inspect_file(defect)
    assert from_config.score == from_bundle.score
    assert unmasked.score > from_bundle.score
    # polygon (0..40, 0..30) of 64x64 frame -> model pixels (0..20, 0..15) of 32x32
    assert np.all(from_bundle.heat[:15, :20] == 0) and np.any(unmasked.heat[:15, :20] > 0)
    cli = run_cli("score", "--model", parts_bundle, defect)
    assert strict_json(cli.stdout)["score"] == from_bundle.score


@pytest.mark.slow
def test_daemon_config_ignore_polygons_and_unscorable_count(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path, count=6)
    cv2.imwrite(str(frames / "999-blank.png"), np.zeros((28, 28), np.uint8))
    whole_frame = [[0, 0], [28, 0], [28, 28], [0, 28]]
    config = write_config(tmp_path, broker.port, frames, inference={"ignore_polygons": [whole_frame]})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/stats"])
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0, daemon.log()[-2000:]
    assert collector.wait_for(lambda m: len(results(collector)) >= 7, 10)
    got = results(collector)
    assert all(r["score"] == 0.0 for r in got)
    blank = [r for r in got if r["image"] == "999-blank.png"][0]
    assert blank["verdict"] == "unscorable" and blank["reason"].startswith("blank")
    assert all(r["verdict"] == "pass" for r in got if r is not blank)
    stats = lambda: [strict_json(p) for p in collector.payloads(f"{BASE}/stats")]  # noqa: E731
    assert collector.wait_for(lambda _: stats() and stats()[-1]["frames"] >= 7, 10)  # the final one, after the results
    assert stats()[-1]["unscorable"] == 1


def full_rule(m, limits) -> str | None:
    """The gate's rule on every figure of measure(): what the lazy per-frame check must agree with."""
    if m["contrast"] < 0.01:
        return "blank"
    if m["brightness"] > limits.brightness_max or m["saturated"] > limits.saturated_max:
        return "overexposed"
    if m["brightness"] < limits.brightness_min or m["dark"] > limits.dark_max:
        return "underexposed"
    if m["sharpness"] < limits.sharpness_min:
        return "blurred"
    return None


def test_lazy_quality_check_agrees_with_the_full_rule():
    from edge.core.quality import QualityLimits, measure, problem

    rng = np.random.default_rng(7)
    for _ in range(3000):
        size = int(rng.integers(8, 40))
        kind = rng.integers(4)
        if kind == 0:
            x = rng.uniform(size=(size, size, 1))
        elif kind == 1:
            x = np.clip(rng.normal(rng.uniform(), rng.uniform(0, 0.5), (size, size, 1)), 0, 1)
        elif kind == 2:
            x = (rng.uniform(size=(size, size, 1)) < rng.uniform()).astype(float)  # only 0s and 1s
        else:
            x = np.full((size, size, 1), rng.uniform()) + rng.normal(0, 0.005, (size, size, 1))
        x = np.clip(x, 0, 1).astype(np.float32)
        lo, hi = sorted(rng.uniform(size=2))
        limits = QualityLimits(lo, hi, float(rng.uniform()), float(rng.uniform()), float(rng.uniform(0, 2)))
        expected = full_rule(measure(x), limits)
        got = problem(x, limits)
        assert (got is None) == (expected is None) and (got is None or got.startswith(expected)), (expected, got)
