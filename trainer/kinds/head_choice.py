"""Choosing between the `features` heads from good images only (the trainer's side; fitting and checking a head
are the registry's, edge.kinds.features.heads)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from edge.core.scoring import ScoringSpec, edge_band_mask, score_heat
from edge.kinds.features import distance_heat
from edge.kinds.features.heads import HEADS, Head, HeadFit, fit_head, head_from_arrays
from trainer.calibration import choose_threshold

logger = logging.getLogger(__name__)


def progress(items, **options):
    """A quiet progress bar for the loops of a head's fit."""
    return tqdm(items, leave=False, mininterval=0.5, **options)


ScoreOf = Callable[[np.ndarray], float]  # one image's patch distances -> its image score


def image_scores(head: Head, features: np.ndarray, score_of: ScoreOf | None = None) -> np.ndarray:
    """Each image's score: by ``score_of`` (device_score_of: what the station computes), else the largest patch
    distance."""
    channels = head.channels
    score_of = score_of or np.max
    return np.array([score_of(head.distances(f[:, channels])) for f in features])


def device_score_of(grid: tuple[int, int], size: tuple[int, int], spec: ScoringSpec) -> ScoreOf:
    """The station's image score from a head's patch distances: upsampled to the (height, width) model input,
    smoothed, the edge band left out, reduced (edge.kinds.features, edge.core.scoring), so the choice measures
    what ships."""
    band = edge_band_mask(size, spec.edge_band)
    return lambda distances: score_heat(distance_heat(distances, grid, size), spec, band)[1]


def caught_above_goods(good_scores: np.ndarray, defect_scores: np.ndarray) -> float:
    """Share of defects scoring above every held-out good image: what a threshold that rejects none of them
    catches. AUROC rewards ranking; this rewards separating at the top, where a station's threshold sits."""
    return float(np.mean(defect_scores > good_scores.max()))


def choose_head(fit_features: np.ndarray, good: np.ndarray, defective: np.ndarray, setting: HeadFit,
                candidates: tuple[str, ...] = ("padim", "patchcore"), score_of: ScoreOf | None = None) -> tuple[str, dict]:
    """Fit every candidate head on part of the good images; the one that catches the most of the same held-out
    images with synthetic defects above all held-out good images wins (then the higher AUROC, then the first
    listed). Returns its name and the measurements."""
    labels = np.r_[np.zeros(len(good)), np.ones(len(defective))]
    measured, caught = {}, {}
    for head_type in candidates:
        _, _, head = fit_head(head_type, fit_features, replace(setting, quick=True))
        good_scores, defect_scores = image_scores(head, good, score_of), image_scores(head, defective, score_of)
        measured[head_type] = round(float(roc_auc_score(labels, np.r_[good_scores, defect_scores])), 4)
        caught[head_type] = round(caught_above_goods(good_scores, defect_scores), 4)
        logger.info("head choice: %s catches %.1f%% of synthetic defects above all %d held-out good images (AUROC "
                    "%.4f)", head_type, 100 * caught[head_type], len(good), measured[head_type])
    chosen = max(candidates, key=lambda name: (caught[name], measured[name], -candidates.index(name)))
    reason = (f"{chosen}: catches {caught[chosen]:.1%} of synthetic defects above all {len(good)} held-out good "
              "images (" + ", ".join(f"{k} {caught[k]:.1%}, AUROC {measured[k]:.4f}" for k in candidates) + ")")
    return chosen, {"auroc_on_synthetic": measured, "caught_on_synthetic": caught, "reason": reason}


CHOICE_FOLDS = 5


def cross_fitted(head_type: str, features: np.ndarray, defect_features: np.ndarray, setting: HeadFit,
                 folds: list[np.ndarray], score_of: ScoreOf | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold image scores of every good image and of its copy with a synthetic defect (quick fits)."""
    good, defect = np.zeros(len(features)), np.zeros(len(features))
    droppable = hasattr(HEADS[head_type], "without_images")  # one fit, then each fold's images left out of it
    whole = fit_head(head_type, features, replace(setting, quick=True))[0] if droppable else None
    for held in folds:
        keep = np.ones(len(features), dtype=bool)
        keep[held] = False
        if droppable:
            head = head_from_arrays(head_type, HEADS[head_type].without_images(whole, held),
                                    Path(f"<{head_type} without a fold>"), features.shape[2])
        else:
            _, _, head = fit_head(head_type, features[keep], replace(setting, quick=True))
        good[held] = image_scores(head, features[held], score_of)
        defect[held] = image_scores(head, defect_features[held], score_of)
    return good, defect


def choose_head_at_threshold(features: np.ndarray, defect_features: np.ndarray, setting: HeadFit,
                             candidates: tuple[str, ...], target_frr: float, score_of: ScoreOf | None = None,
                             counted: np.ndarray | None = None) -> tuple[str, dict]:
    """The head that catches the most synthetic defects at the threshold it would ship.

    Every good image and its copy with a synthetic defect are scored out of fold; each head's threshold comes from
    its good scores by the calibration's own rule (trainer.calibration). A head that ranks well but whose good
    parts spread widely (PaDiM on parts at random angles: a good part in a rare pose looks anomalous) ships a high
    threshold and catches little; this measures that, where AUROC on a small held-out share does not.
    `score_of`: the station's image score (device_score_of); `counted`: the synthetic defects that reach inside
    an edge band (one wholly in the band cannot be seen, whatever the head).
    """
    order = np.random.default_rng(setting.seed).permutation(len(features))
    folds = [order[i::CHOICE_FOLDS] for i in range(CHOICE_FOLDS)]
    caught, aurocs, thresholds = {}, {}, {}
    for head_type in candidates:
        good, defect = cross_fitted(head_type, features, defect_features, setting, folds, score_of)
        if counted is not None:
            defect = defect[counted]
        threshold = choose_threshold(good, target_frr).threshold
        caught[head_type] = round(float(np.mean(defect >= threshold)), 4)
        labels = np.r_[np.zeros(len(good)), np.ones(len(defect))]
        aurocs[head_type] = round(float(roc_auc_score(labels, np.r_[good, defect])), 4)
        thresholds[head_type] = threshold
        logger.info("head choice: %s catches %.1f%% of synthetic defects at its threshold for %.1f%% false rejects "
                    "(AUROC %.4f), all %d good images scored out of fold", head_type, 100 * caught[head_type],
                    100 * target_frr, aurocs[head_type], len(features))
    chosen = max(candidates, key=lambda name: (caught[name], aurocs[name], -candidates.index(name)))
    reason = (f"{chosen}: catches {caught[chosen]:.1%} of synthetic defects at the threshold it would ship for "
              f"{target_frr:.1%} false rejects, every good image and its defective copy scored out of fold ("
              + ", ".join(f"{k} {caught[k]:.1%}, AUROC {aurocs[k]:.4f}" for k in candidates) + ")")
    return chosen, {"auroc_on_synthetic": aurocs, "caught_on_synthetic": caught, "reason": reason}
