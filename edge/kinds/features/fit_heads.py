"""Choosing between the `features` heads from good images only (the trainer's side; fitting and checking a head
are the registry's, edge.kinds.features.heads)."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from edge.kinds.features.heads import Head, HeadFit, fit_head

logger = logging.getLogger(__name__)


def progress(items, **options):
    """A quiet progress bar for the loops of a head's fit."""
    return tqdm(items, leave=False, mininterval=0.5, **options)


def image_scores(head: Head, features: np.ndarray) -> np.ndarray:
    """Max patch distance per image (the device's image score before smoothing)."""
    channels = head.channels
    return np.array([head.distances(f[:, channels]).max() for f in features])


def choose_head(fit_features: np.ndarray, good: np.ndarray, defective: np.ndarray, setting: HeadFit,
                candidates: tuple[str, ...] = ("padim", "patchcore")) -> tuple[str, dict]:
    """Fit every candidate head on part of the good images; the one that best separates held-out good images from
    the same images with synthetic defects wins. Returns its name and the measurements."""
    labels = np.r_[np.zeros(len(good)), np.ones(len(defective))]
    measured = {}
    for head_type in candidates:
        _, _, head = fit_head(head_type, fit_features, replace(setting, quick=True))
        scores = np.r_[image_scores(head, good), image_scores(head, defective)]
        measured[head_type] = round(float(roc_auc_score(labels, scores)), 4)
        logger.info("head choice: %s separates %d held-out good images from synthetic defects with AUROC %.4f",
                    head_type, len(good), measured[head_type])
    chosen = max(measured, key=lambda name: (measured[name], -candidates.index(name)))  # a tie: the first listed
    reason = (f"{chosen}: image AUROC {measured[chosen]:.4f} on {len(good)} held-out good images against the same "
              f"images with synthetic defects (" + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()) + ")")
    return chosen, {"auroc_on_synthetic": measured, "reason": reason}
