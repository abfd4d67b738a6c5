"""Calibration on every training good image, scored out of fold: the threshold holds when one more good image
arrives, and a defect filed among the good images is named for a person to check, not used as the threshold."""
import json

import cv2
import numpy as np
import pytest

from tests.support.helpers import make_mvtec, paint_defect, run_cli, textured_part

pytestmark = pytest.mark.slow

N_TRAIN = 160


def _train(data, out, *extra):
    result = run_cli("train", "--data", data, "--out", out, "--model", "features", "--size", "64", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "model.json").read_text()), result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross-fit")
    data = make_mvtec(root / "parts", n_train=N_TRAIN, n_good=20, n_bad=20, seed=3)
    rng = np.random.default_rng(11)
    mislabelled, _ = paint_defect(textured_part(rng), rng)
    mislabelled[8:56, 8:56] = 255 - mislabelled[8:56, 8:56]  # unmistakably not a good part
    cv2.imwrite(str(data / "train/good/zz-mislabelled.png"), mislabelled)
    extra = root / "extra"
    (extra / "train/good").mkdir(parents=True)
    cv2.imwrite(str(extra / "train/good/one-more.png"), textured_part(np.random.default_rng(99)))
    first, result = _train(data, root / "models/first")
    second, _ = _train(data, root / "models/second", "--extra-good", extra)
    return first, second, result, root


def test_every_good_image_calibrates_out_of_fold(trained):
    first, _, result, root = trained
    stats = first["calibration"]["stats"]
    assert stats["scored_out_of_fold"] is True and stats["n_good"] == N_TRAIN + 1
    assert first["provenance"]["held_out_images"] == 0 and first["provenance"]["train_images"] == N_TRAIN + 1
    assert stats["reachable"] is True and stats["add_good"] == 0
    low, high = stats["frr_interval"]
    assert low < stats["target_frr"] < high
    assert "scored out of fold" in (root / "models/first/report/README.md").read_text()


def test_one_more_good_image_moves_the_threshold_less_than_its_interval(trained):
    first, second, _, _ = trained
    low, high = first["calibration"]["stats"]["threshold_interval"]
    moved = second["calibration"]["threshold"]
    assert second["calibration"]["stats"]["n_good"] == N_TRAIN + 2
    assert low <= moved and (high is None or moved <= high), (low, moved, high)


def test_a_defect_among_the_good_images_is_named_and_does_not_set_the_threshold(trained):
    first, _, result, root = trained
    stats = first["calibration"]["stats"]
    unusual = [u["image"] for u in stats["unusual_goods"]]
    assert unusual == ["zz-mislabelled.png"] or unusual[0].endswith("zz-mislabelled.png"), stats["unusual_goods"]
    assert first["calibration"]["threshold"] < stats["unusual_goods"][0]["score"]
    assert "score like defects" in result.stderr and "zz-mislabelled" in result.stderr
    assert (root / "models/first/report/unusual-goods.png").is_file()
