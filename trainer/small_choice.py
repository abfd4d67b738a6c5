"""The default model for small images (MNIST-sized), chosen by measurement from good images only.

Like the features kind's head choice: hold out part of the good training images, paste synthetic defects onto
them (trainer.synthetic), fit each candidate on the rest and keep the one that best separates the held-out good
images from the same images with defects. Candidates: the study's dense autoencoder (its l1 residual summed, as
the device scores it) and the features kind's global knn head on the backbone run at FEATURES_UPSCALE times the
image size. Only whole-image models compete: on a small image the anomaly is a different shape (a 9 among 1s)
rather than a local blemish, and the patch heads, which synthetic local defects favour, then lose on the real
thing (MNIST 1 vs 9 with all 6,742 training 1s: PaDiM, chosen when it competed, 0.9915; knn 0.9996; the dense
autoencoder 0.9989).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from edge.core.preprocess import PreprocessSpec
from trainer.data import Dataset, Sample, load_arrays
from trainer.models import MODELS, module_for

logger = logging.getLogger(__name__)

SMALL_MAX_SIDE = 32  # images up to this side (px), MNIST-sized, get the measured choice: autoencoder or features
SMALL_IMAGE_HEADS = ("knn",)  # the whole-image feature head; see the module text for why patch heads don't compete
# The two candidates. The features choice's small_upscale (2) enlarges small images for the backbone: MNIST 1 vs 9
# 0.9993 at 56 px, 0.9978 at 28.
AUTOENCODER, FEATURES = "dense", "features"


def is_small(dataset: Dataset) -> bool:
    return max(max(size) for size in dataset.sizes) <= SMALL_MAX_SIDE


def enlarged_size(dataset: Dataset, upscale: int) -> tuple[int, int]:
    height, width = max(dataset.sizes)
    return height * upscale, width * upscale


def _resized(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    out = np.stack([cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in images])
    return out.reshape(len(images), height, width, -1)


def _autoencoder_auroc(options, kept: np.ndarray, good: np.ndarray, defective: np.ndarray) -> float:
    model = module_for(MODELS[AUTOENCODER]).fit(options, kept)
    scores = [np.abs(x - model.predict(x, batch_size=256, verbose=0)).reshape(len(x), -1).sum(axis=1)
              for x in (good, defective)]
    return float(roc_auc_score(np.r_[np.zeros(len(good)), np.ones(len(defective))], np.concatenate(scores)))


def _features_choice(options, kept: np.ndarray, good: np.ndarray, defective: np.ndarray) -> tuple[str, dict]:
    features = module_for(MODELS[FEATURES])
    int8_bytes, float_bytes = features.sized_backbone(options.size)
    with tempfile.TemporaryDirectory(prefix="lineguard-backbone-") as folder:
        extractor = features.open_extractor(int8_bytes, Path(folder), options.threads)
        setting = features.head_setting(extractor, len(int8_bytes) + len(float_bytes), options.seed)
        fit, held, bad = (np.stack(list(features.extract(extractor, _resized(x, options.size), desc)))
                          for x, desc in ((kept, "features"), (good, "held out"), (defective, "synthetic defects")))
    return features.choose_head(fit, held, bad, setting, SMALL_IMAGE_HEADS)


def choose(options, dataset: Dataset, fit_samples: list[Sample]):
    """The options with `model` (and for features `head` and `size`) chosen; and the measurements."""
    dense = replace(options, model=AUTOENCODER).resolved(dataset)
    x = load_arrays(fit_samples, dense_spec(dense))
    split = module_for(MODELS[FEATURES]).held_out_defects(x, options.seed)
    if split is None:
        reason = f"dense: too few images ({len(x)}) to hold some out and measure"
        return replace(options, model=AUTOENCODER), {"reason": reason}
    kept, held, defective = split
    logger.info("model choice for small images: the dense autoencoder and the features knn head, measured on %d "
                "held-out good images with synthetic defects", len(held))
    measured = {"dense": round(_autoencoder_auroc(dense, x[kept], x[held], defective), 4)}
    logger.info("model choice: dense autoencoder AUROC %.4f", measured["dense"])
    size = enlarged_size(dataset, MODELS[FEATURES].small_upscale)
    feats = replace(options, model=FEATURES, size=size).resolved(dataset)
    head, head_choice = _features_choice(feats, x[kept], x[held], defective)
    measured.update({f"features/{name}": value for name, value in head_choice["auroc_on_synthetic"].items()})
    winner = max(measured, key=lambda name: (measured[name], name == "dense"))  # a tie keeps the study's model
    reason = (f"{winner}: image AUROC {measured[winner]:.4f} on {len(held)} held-out good images against the same "
              f"images with synthetic defects (" + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()) + ")")
    logger.info("model: %s", reason)
    info = {"auroc_on_synthetic": measured, "reason": reason}
    if winner == AUTOENCODER:
        return replace(options, model=AUTOENCODER), info
    return replace(options, model=FEATURES, head=winner.split("/")[1], size=options.size or size), info


def dense_spec(options) -> PreprocessSpec:
    return PreprocessSpec(color=options.color, height=options.size[0], width=options.size[1], roi=options.roi)
