"""`--edge-band`: the outer pixels of the model input left out of the score, shipped in the bundle's ignore mask;
and the calibration's check that says when the highest good scores peak on the frame's edge."""
from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from edge.core.bundle import MANIFEST_NAME, load_bundle
from edge.core.inspector import Inspector
from edge.core.scoring import ScoringSpec, edge_band_mask, score_heat
from edge.kinds.features import distance_heat
from trainer.calibration import choose_threshold, edge_peaks
from trainer.kinds.features import visible_defects
from trainer.kinds.head_choice import device_score_of, image_scores
from tests.support.helpers import FIXTURES, run_cli, textured_part

TILES = FIXTURES / "magnetic-tile"
SIDE = 100


def _heats(count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Smooth good-part maps whose maxima lie in the interior, and their scores."""
    rng = np.random.default_rng(seed)
    heats = []
    for _ in range(count):
        heat = rng.normal(10.0, 1.0, (SIDE, SIDE)).astype(np.float32)
        heat = cv2.GaussianBlur(heat, (0, 0), 4.0)
        heat[40:60, 40:60] += rng.gamma(2.0, 0.5)  # the part, in the middle: where the good scores peak
        heats.append(heat)
    return heats, np.array([h.max() for h in heats], dtype=np.float64)


def test_no_note_when_the_highest_good_scores_peak_on_the_part():
    heats, scores = _heats(200, seed=0)
    assert edge_peaks(heats, scores, 0.01, choose_threshold(scores, 0.01).threshold) is None


def test_specks_on_the_edge_that_set_the_threshold_are_named_with_what_the_band_would_ship():
    heats, scores = _heats(200, seed=0)
    for i, column in zip(range(0, 200, 25), range(5, 100, 12)):  # one good image in 25 has a speck on the edge
        heats[i][SIDE - 2, column] += 30.0
    scores = np.array([h.max() for h in heats])
    threshold = choose_threshold(scores, 0.01).threshold
    edge = edge_peaks(heats, scores, 0.01, threshold)
    assert edge is not None and edge["band_px"] == 5
    assert edge["at_edge"] > edge["top_goods"] / 2
    inner = np.array([h[5:95, 5:95].max() for h in heats])
    assert edge["threshold_with_band"] == choose_threshold(inner, 0.01).threshold < threshold
    assert f"--edge-band 5 would set the threshold at {edge['threshold_with_band']:.4g}" in edge["note"]


def test_no_note_when_the_top_scores_peak_on_the_edge_but_the_band_would_barely_move_the_threshold():
    heats, scores = _heats(200, seed=0)
    for i in np.argsort(-scores)[:8]:  # the highest goods peak on the edge, a hair above their own part
        heats[i][0, 50] = scores[i] + 0.01
    scores = np.array([h.max() for h in heats])
    assert edge_peaks(heats, scores, 0.01, choose_threshold(scores, 0.01).threshold) is None


@pytest.fixture(scope="module")
def banded(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "banded"
    result = run_cli("train", "--data", TILES, "--head", "padim", "--edge-band", "16", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_band_ships_in_the_bundle_and_the_device_leaves_exactly_it_out(banded):
    manifest = json.loads((banded / MANIFEST_NAME).read_text())
    assert manifest["scoring"]["edge_band"] == 16
    inside = np.zeros((224, 224), bool)
    inside[16:208, 16:208] = True
    inspector = Inspector(load_bundle(banded), threads=1)
    for image in sorted((TILES / "test").rglob("*.png")) + sorted((TILES / "test").rglob("*.jpg")):
        result = inspector.inspect_file(image)
        assert np.all(result.heat[~inside] == 0) and np.all(result.heat[inside] > 0)
        assert result.score == float(result.heat[inside].max())


def test_the_report_and_evaluate_score_with_the_band_as_the_device_does(banded, tmp_path):
    report = tmp_path / "report"
    result = run_cli("evaluate", "--model", banded, "--data", TILES, "--out", report)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((report / "scores.csv").open()))
    scored = run_cli("score", "--model", banded, *[TILES / row["image"] for row in rows])
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert [json.loads(line)["score"] for line in scored.stdout.splitlines()] == [float(r["score"]) for r in rows]


@pytest.mark.parametrize("band, message", [
    (112, "scoring.edge_band 112 leaves nothing of the 224x224 model input to score"),
    (-3, "scoring.edge_band must be a whole number of pixels >= 0, got -3"),
    (2.5, "scoring.edge_band must be a whole number of pixels >= 0, got 2.5"),
])
def test_a_bundle_whose_band_leaves_nothing_to_score_is_refused_never_passes_parts(banded, tmp_path, band, message):
    broken = tmp_path / "broken"
    shutil.copytree(banded, broken)
    manifest = json.loads((broken / MANIFEST_NAME).read_text())
    manifest["scoring"]["edge_band"] = band
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = run_cli("score", "--model", broken, next((TILES / "test" / "good").iterdir()))
    assert result.returncode != 0 and message in result.stderr and str(broken / MANIFEST_NAME) in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (("--edge-band", "112"), "--edge-band 112 leaves nothing of the 224x224 model input to score"),
    (("--edge-band", "-1"), "--edge-band: -1 is outside [0, inf]"),
])
def test_a_band_that_cannot_work_is_refused_in_one_line_and_nothing_is_written(tmp_path, args, message):
    out = tmp_path / "bundle"
    result = run_cli("train", "--data", TILES, "--head", "padim", *args, "--out", out)
    assert result.returncode != 0 and message in result.stderr
    assert not any(tmp_path.iterdir())


def _good_parts(folder, specks: int) -> None:
    """40 good parts; the first `specks` carry a dark speck on the frame's top edge, as dust on a background."""
    rng = np.random.default_rng(7)
    (folder / "train" / "good").mkdir(parents=True)
    for i in range(40):
        image = textured_part(rng, size=96)
        if i < specks:
            column = int(rng.integers(10, 86))
            image[0:3, column:column + 3] = 0
        cv2.imwrite(str(folder / "train" / "good" / f"{i:03d}.png"), image)


@pytest.mark.parametrize("specks", [0, 4])
def test_train_says_when_the_threshold_is_set_on_the_frame_edge_and_what_a_band_would_ship(tmp_path, specks):
    _good_parts(tmp_path / "part", specks)
    out = tmp_path / "bundle"
    result = run_cli("train", "--data", tmp_path / "part", "--head", "padim", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads((out / MANIFEST_NAME).read_text())["calibration"]["stats"]
    if not specks:
        assert "edge_peaks" not in facts and "--edge-band" not in result.stdout + result.stderr
        return
    edge = facts["edge_peaks"]
    assert edge["band_px"] == 11 and edge["at_edge"] >= 2 and edge["threshold_with_band"] < facts["good_p99"] * 2
    assert f"note: {edge['note']}" in result.stdout and edge["note"] in result.stderr
    assert f"--edge-band 11 would set the threshold at {edge['threshold_with_band']:.4g}" in edge["note"]


def test_the_head_choice_scores_as_the_station_does_band_and_smoothing_included():
    class Edgy:  # a head whose patch distances are the first feature channel
        channels = np.arange(2)

        def distances(self, features):
            return features[:, 0]

    features = np.zeros((1, 1600, 2), np.float32)  # a 40 x 40 patch grid, 320 px model input
    features[0, 5, 0], features[0, 3 * 40 + 7, 0] = 9.0, 2.0  # the larger on the top row, the other inside
    raw = ScoringSpec(None, "max", 0.0, 0.01, 0)
    banded = ScoringSpec(None, "max", 0.0, 0.01, 16)
    smoothed = ScoringSpec(None, "max", 4.0, 0.01, 16)
    assert image_scores(Edgy(), features)[0] == 9.0  # no station spec: the largest patch distance
    assert image_scores(Edgy(), features, device_score_of((40, 40), (320, 320), raw))[0] > 8.0
    with_band = image_scores(Edgy(), features, device_score_of((40, 40), (320, 320), banded))[0]
    assert 1.5 < with_band <= 2.0  # the top row's patch lies wholly in the 16 px band: only the inner one counts
    with_smoothing = image_scores(Edgy(), features, device_score_of((40, 40), (320, 320), smoothed))[0]
    assert with_smoothing < 0.8 * with_band  # a lone patch is spread by the sigma 4 px blur, as on the device
    # The same figure as the station's own path for that map.
    heat = distance_heat(features[0, :, 0], (40, 40), (320, 320))
    assert with_smoothing == score_heat(heat, smoothed, edge_band_mask((320, 320), 16))[1]


def test_a_synthetic_defect_wholly_inside_the_band_is_not_counted_in_the_head_choice():
    masks = np.zeros((3, 64, 64), np.float32)
    masks[0, 0:4, 10:20] = 1  # wholly in an 8 px band
    masks[1, 5:12, 30:34] = 1  # reaches inside it
    masks[2, 30:40, 30:40] = 1
    assert visible_defects(masks, 0) is None
    assert visible_defects(masks, 8).tolist() == [False, True, True]
