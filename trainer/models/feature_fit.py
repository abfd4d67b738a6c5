"""Fitting the `features` heads on good images' patch features, and choosing between them from good images only.

The device side of each head is edge.core.feature_heads; what is fitted here is exactly what it reads.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from edge.core.feature_heads import PadimHead, PatchcoreHead, pack_upper, unpack_upper

logger = logging.getLogger(__name__)

PADIM_EPSILON = 0.01  # added to every covariance diagonal, as in the PaDiM paper: keeps it invertible
FIT_BATCH = 32  # images whose patch statistics are added up in one matrix product
BUNDLE_LIMIT_BYTES = 16_000_000  # the head is kept so that the whole bundle folder stays under this
REPORT_ALLOWANCE_BYTES = 1_000_000  # left for model.json and report/ (plots, scores.csv)
PRECISION_BYTES = 2  # float16 per stored precision value
CORESET_FRACTION = 0.01  # of all training patches, as in the PatchCore paper's 1 % setting
CORESET_MAX = 4096  # bank entries: bounds the device's matmul (positions x entries x channels) per frame
CORESET_POOL = 100_000  # training patches the greedy selection looks at (a random subset beyond this)
CHOICE_POOL = 50_000  # the same while choosing the head: half the selection time, for a comparison only
PROJECTION_DIM = 32  # random projection for the greedy k-center distances (PatchCore's Johnson-Lindenstrauss step)


def channel_budget(positions: int, channels: int, other_bytes: int) -> int:
    """The most channels whose float16 precision triangles keep the bundle under BUNDLE_LIMIT_BYTES."""
    room = BUNDLE_LIMIT_BYTES - REPORT_ALLOWANCE_BYTES - other_bytes - positions * channels * 4
    best = channels
    while best > 8 and positions * best * (best + 1) // 2 * PRECISION_BYTES > room:
        best -= 1
    return best


def choose_channels(variances: np.ndarray, count: int) -> np.ndarray:
    """The `count` channels with the largest mean variance over positions (flat channels carry little)."""
    if count >= variances.size:
        return np.arange(variances.size, dtype=np.int32)
    return np.sort(np.argsort(-variances, kind="stable")[:count]).astype(np.int32)


def fit_padim(features: np.ndarray, budget_bytes: int) -> tuple[dict[str, np.ndarray], dict]:
    """Mean and precision per position from (images, positions, channels) features, summed in batches."""
    count, positions, channels = features.shape
    if count < 2:
        raise ValueError("PaDiM needs at least 2 training images")
    total = np.zeros((positions, channels), np.float64)
    outer = np.zeros((positions, channels, channels), np.float64)
    for start in range(0, count, FIT_BATCH):
        stacked = np.swapaxes(features[start:start + FIT_BATCH], 0, 1).astype(np.float64)  # (positions, n, C)
        total += stacked.sum(axis=1)
        outer += np.matmul(np.swapaxes(stacked, 1, 2), stacked)
    mean = total / count
    cov = (outer - count * mean[:, :, None] * mean[:, None, :]) / (count - 1)
    keep = choose_channels(np.einsum("pcc->c", cov) / positions, channel_budget(positions, channels, budget_bytes))
    cov = cov[:, keep][:, :, keep] + PADIM_EPSILON * np.eye(keep.size)
    precision = np.linalg.inv(cov)
    precision = (precision + np.swapaxes(precision, 1, 2)) / 2
    arrays = {"channels": keep, "mean": mean[:, keep].astype(np.float32),
              "precision_upper": pack_upper(precision).astype(np.float16)}
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError("PaDiM statistics are not finite (are the training images all the same?)")
    return arrays, {"images": count, "channels_kept": int(keep.size), "channels_total": channels,
                    "covariance_epsilon": PADIM_EPSILON, "precision_storage": "float16 upper triangles"}


def greedy_coreset(patches: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a greedy k-center coreset (PatchCore): each step adds the patch farthest from those chosen,
    distances taken in a random projection and updated for all patches at once."""
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(patches.shape[1], PROJECTION_DIM)).astype(np.float32) / np.sqrt(PROJECTION_DIM)
    projected = patches @ projection
    chosen = np.empty(size, np.int64)
    chosen[0] = rng.integers(len(patches))
    nearest = np.full(len(patches), np.inf, np.float32)
    for i in tqdm(range(1, size + 1), desc="coreset", unit="patch", leave=False, mininterval=0.5):
        diff = projected - projected[chosen[i - 1]]
        np.minimum(nearest, np.einsum("nd,nd->n", diff, diff), out=nearest)
        if i < size:
            chosen[i] = int(np.argmax(nearest))
    return chosen


def fit_patchcore(features: np.ndarray, seed: int, pool_size: int = CORESET_POOL) -> tuple[dict[str, np.ndarray], dict]:
    count, positions, channels = features.shape
    patches = features.reshape(-1, channels)
    rng = np.random.default_rng(seed)
    pool = patches if len(patches) <= pool_size else patches[rng.choice(len(patches), pool_size, replace=False)]
    size = int(min(CORESET_MAX, max(1, round(len(patches) * CORESET_FRACTION)), len(pool)))
    bank = pool[greedy_coreset(pool, size, seed)]
    arrays = {"channels": np.arange(channels, dtype=np.int32), "bank": bank.astype(np.float16),
              "positions": np.array(positions, dtype=np.int64)}
    return arrays, {"images": count, "bank_entries": size, "patches": int(len(patches)),
                    "coreset": f"greedy k-center on a {PROJECTION_DIM}-d random projection of {len(pool)} patches",
                    "bank_storage": "float16"}


def head_from_arrays(head_type: str, arrays: dict[str, np.ndarray]) -> PadimHead | PatchcoreHead:
    """The device's head object on freshly fitted arrays (as the device will read them back)."""
    if head_type == "padim":
        count = arrays["channels"].size
        return PadimHead(arrays["channels"], arrays["mean"], unpack_upper(arrays["precision_upper"], count))
    return PatchcoreHead(arrays["channels"], arrays["bank"].astype(np.float32), int(arrays["positions"]))


def image_scores(head, features: np.ndarray) -> np.ndarray:
    """Max patch distance per image (the device's image score before smoothing)."""
    channels = head.channels
    return np.array([head.distances(f[:, channels]).max() for f in features])


def choose_head(fit_features: np.ndarray, good: np.ndarray, defective: np.ndarray, budget_bytes: int,
                seed: int) -> tuple[str, dict]:
    """Fit both heads on part of the good images; the one that best separates held-out good images from the same
    images with synthetic defects wins. Returns its name and the measurements."""
    labels = np.r_[np.zeros(len(good)), np.ones(len(defective))]
    measured = {}
    for head_type in ("padim", "patchcore"):
        if head_type == "padim":
            arrays, _ = fit_padim(fit_features, budget_bytes)
        else:
            arrays, _ = fit_patchcore(fit_features, seed, CHOICE_POOL)
        head = head_from_arrays(head_type, arrays)
        scores = np.r_[image_scores(head, good), image_scores(head, defective)]
        measured[head_type] = round(float(roc_auc_score(labels, scores)), 4)
        logger.info("head choice: %s separates %d held-out good images from synthetic defects with AUROC %.4f",
                    head_type, len(good), measured[head_type])
    chosen = max(measured, key=lambda name: (measured[name], name == "padim"))  # a tie goes to the cheaper head
    reason = (f"{chosen}: image AUROC {measured[chosen]:.4f} on {len(good)} held-out good images against the same "
              f"images with synthetic defects (" + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()) + ")")
    return chosen, {"auroc_on_synthetic": measured, "reason": reason}
