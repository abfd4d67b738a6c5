"""The cross-fitted threshold: its rank, intervals, unusual goods, and the fit / not fit verdict."""
import numpy as np
import pytest

from trainer import calibration, fitness
from trainer.metrics import min_good_for_target


def test_folds_come_from_names_so_one_more_image_moves_no_other():
    names = [f"good/{i:04d}.png" for i in range(200)]
    before = [calibration.fold_of(n) for n in names]
    after = [calibration.fold_of(n) for n in names + ["good/extra.png"]][:200]
    assert before == after
    folds = calibration.fold_indices(names)
    assert sorted(np.concatenate(folds).tolist()) == list(range(200))
    assert len(folds) == calibration.FOLDS and min(len(f) for f in folds) > 8


def test_enough_goods_hold_the_target_and_the_interval_covers_it():
    scores = np.random.default_rng(0).lognormal(3.0, 0.1, size=1000)
    choice = calibration.choose_threshold(scores, 0.01)
    assert choice.reachable and choice.add_good == 0
    assert np.mean(scores >= choice.threshold) <= 0.01
    low, high = choice.frr_interval
    assert low < 0.01 < high and high < 0.03
    t_low, t_high = choice.threshold_interval
    assert t_low < choice.threshold <= t_high


def test_one_glare_image_does_not_set_the_threshold():
    """Like the metal plate: 53 goods at 35.6-40.1 and one glare at 50.1; defects from 42."""
    rng = np.random.default_rng(1)
    usual = rng.uniform(35.6, 40.1, size=53)
    scores = np.r_[usual[:20], 50.1, usual[20:]]
    choice = calibration.choose_threshold(scores, 0.01)
    assert choice.unusual == [20]
    assert usual.max() < choice.threshold < 42.1  # the plate's defects start at 42.1
    assert not choice.reachable and choice.add_good == min_good_for_target(0.01) - 53
    assert "more good image" in choice.note and "unusual" in choice.note


def test_a_spread_of_goods_has_no_unusual_member():
    scores = np.random.default_rng(2).gamma(4.0, 10.0, size=500)
    assert calibration.unusual_goods(scores, 0.005).size == 0


def test_one_more_good_image_moves_the_threshold_within_its_interval():
    rng = np.random.default_rng(3)
    scores = rng.lognormal(3.0, 0.15, size=700)
    first = calibration.choose_threshold(scores, 0.01)
    second = calibration.choose_threshold(np.r_[scores, rng.lognormal(3.0, 0.15)], 0.01)
    low, high = first.threshold_interval
    assert low <= second.threshold <= high


def test_non_finite_scores_refuse_to_calibrate():
    with pytest.raises(ValueError, match="finite"):
        calibration.choose_threshold(np.array([1.0, np.nan]), 0.01)


def _set(n_good=200, n_bad=100, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0, 1, n_good), rng.normal(shift, 1, n_bad)]
    labels = np.r_[np.zeros(n_good, int), np.ones(n_bad, int)]
    defects = ["good"] * n_good + ["crack"] * (n_bad // 2) + ["hole"] * (n_bad - n_bad // 2)
    return scores, labels, defects


def test_fit_when_it_catches_enough_at_the_target():
    scores, labels, defects = _set(shift=8.0)
    summary = fitness.fitness(scores, labels, defects, 3.5, {"target_frr": 0.01, "reachable": True})
    assert summary["verdict"] == "fit" and summary["caught"]["count"] == 100
    assert set(summary["per_class"]) == {"crack", "hole"}
    assert summary["text"].startswith("fit: catches 100% (100/100)")


def test_not_fit_says_what_it_catches():
    scores, labels, defects = _set(shift=1.0)
    summary = fitness.fitness(scores, labels, defects, 2.5, {"target_frr": 0.01, "reachable": True})
    assert summary["verdict"] == "not fit" and "catches" in summary["text"]
    caught = summary["caught"]
    assert caught["ci95"][0] <= caught["rate"] <= caught["ci95"][1]


def test_too_few_goods_asks_for_more():
    scores, labels, defects = _set(shift=8.0)
    summary = fitness.fitness(scores, labels, defects, 3.5, {"target_frr": 0.01, "reachable": False, "add_good": 45})
    assert summary["verdict"] == "not enough good images" and "add 45" in summary["text"]


def test_operating_points_trade_false_rejects_for_catches():
    scores, labels, defects = _set(shift=2.0)
    points = fitness.operating_points(scores, labels)
    assert [p["false_reject_target"] for p in points] == list(fitness.OPERATING_FRRS)
    assert all(p["false_reject_rate"] <= p["false_reject_target"] + 1e-9 for p in points)
    catches = [p["catch_rate"] for p in points]
    assert catches == sorted(catches) and catches[-1] > catches[0]
