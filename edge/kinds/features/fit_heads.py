"""Fitting the `features` heads on good images' patch features, and choosing between them from good images only.

The device side of each head is edge.kinds.features.heads; what is fitted here is exactly what it reads.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from edge.kinds.features.heads import GlobalKnnHead, PadimHead, PatchcoreHead, cell_order, pack_upper, unpack_upper

logger = logging.getLogger(__name__)

PADIM_EPSILON = 0.01  # added to every covariance diagonal, as in the PaDiM paper: keeps it invertible
# Each 2x2 block of patch positions shares one covariance (its positions keep their own means): the device reads a
# quarter of the statistics per frame (12 MB instead of 47 MB at 224 px). Magnetic tile: image AUROC 0.950 against
# 0.955 per position, pixel 0.761 against 0.768, within the split's standard error (README).
PADIM_CELL = 2
FIT_BATCH = 32  # images whose patch statistics are added up in one matrix product
BUNDLE_LIMIT_BYTES = 16_000_000  # the head is kept so that the whole bundle folder stays under this
REPORT_ALLOWANCE_BYTES = 1_000_000  # left for model.json and report/ (plots, scores.csv)
PRECISION_BYTES = 2  # float16 per stored precision value
CORESET_FRACTION = 0.01  # of all training patches, as in the PatchCore paper's 1 % setting
CORESET_MAX = 4096  # bank entries: bounds the device's matmul (positions x entries x channels) per frame
CORESET_POOL = 100_000  # training patches the greedy selection looks at (a random subset beyond this)
CHOICE_POOL = 50_000  # the same while choosing the head: half the selection time, for a comparison only
KNN_NEIGHBOURS = 2  # the knn head's image distance: mean over this many nearest good training images
PROJECTION_DIM = 32  # random projection for the greedy k-center distances (PatchCore's Johnson-Lindenstrauss step)


def channel_budget(positions: int, channels: int, other_bytes: int, blocks: int | None = None) -> int:
    """The most channels whose float16 precision triangles keep the bundle under BUNDLE_LIMIT_BYTES."""
    room = BUNDLE_LIMIT_BYTES - REPORT_ALLOWANCE_BYTES - other_bytes - positions * channels * 4
    blocks = positions if blocks is None else blocks
    best = channels
    while best > 8 and blocks * best * (best + 1) // 2 * PRECISION_BYTES > room:
        best -= 1
    return best


def choose_channels(variances: np.ndarray, count: int) -> np.ndarray:
    """The `count` channels with the largest mean variance over positions (flat channels carry little)."""
    if count >= variances.size:
        return np.arange(variances.size, dtype=np.int32)
    return np.sort(np.argsort(-variances, kind="stable")[:count]).astype(np.int32)


def padim_cell(grid: tuple[int, int] | None) -> int:
    """PADIM_CELL when it tiles the grid, else 1 (a covariance per position)."""
    if grid is None or grid[0] % PADIM_CELL or grid[1] % PADIM_CELL:
        return 1
    return PADIM_CELL


def fit_padim(features: np.ndarray, budget_bytes: int,
              grid: tuple[int, int] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Mean per position and precision per block of positions from (images, positions, channels) features,
    summed in batches."""
    count, positions, channels = features.shape
    cell = padim_cell(grid)
    if count < 2:
        raise ValueError("PaDiM needs at least 2 training images")
    total = np.zeros((positions, channels), np.float64)
    outer = np.zeros((positions, channels, channels), np.float64)
    for start in range(0, count, FIT_BATCH):
        stacked = np.swapaxes(features[start:start + FIT_BATCH], 0, 1).astype(np.float64)  # (positions, n, C)
        total += stacked.sum(axis=1)
        outer += np.matmul(np.swapaxes(stacked, 1, 2), stacked)
    mean = total / count
    scatter = outer - count * mean[:, :, None] * mean[:, None, :]
    if cell > 1:  # pooled over each block's positions, every one about its own mean
        scatter = scatter[cell_order(grid, cell)].reshape(-1, cell * cell, channels, channels).sum(axis=1)
    cov = scatter / (count * cell * cell - 1)
    budget = channel_budget(positions, channels, budget_bytes, cov.shape[0])
    keep = choose_channels(np.einsum("pcc->c", cov) / cov.shape[0], budget)
    cov = cov[:, keep][:, :, keep] + PADIM_EPSILON * np.eye(keep.size)
    precision = np.linalg.inv(cov)
    precision = (precision + np.swapaxes(precision, 1, 2)) / 2
    arrays = {"channels": keep, "mean": mean[:, keep].astype(np.float32),
              "precision_upper": pack_upper(precision).astype(np.float16),
              "grid": np.array(grid or (positions, 1), np.int64), "cell": np.array(cell, np.int64)}
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError("PaDiM statistics are not finite (are the training images all the same?)")
    return arrays, {"images": count, "channels_kept": int(keep.size), "channels_total": channels,
                    "covariance_epsilon": PADIM_EPSILON, "covariance_block": f"{cell}x{cell} positions",
                    "precision_storage": "float16 upper triangles"}


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


def fit_knn(features: np.ndarray, channels: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """One pooled, L2-normalised vector per good image (of the given channels); the device keeps them all."""
    count = features.shape[0]
    k = min(KNN_NEIGHBOURS, count)
    pooled = features[:, :, channels].mean(axis=1, dtype=np.float64)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    arrays = {"channels": channels.astype(np.int32), "bank": pooled.astype(np.float16), "k": np.array(k, np.int64)}
    return arrays, {"images": count, "bank_entries": count, "neighbours": k, "channels_kept": int(channels.size),
                    "pooling": "mean over the patch grid, L2-normalised", "bank_storage": "float16"}


def fit_head(head_type: str, features: np.ndarray, budget_bytes: int, seed: int, knn_channels: np.ndarray,
             grid: tuple[int, int] | None = None, pool_size: int = CORESET_POOL) -> tuple[dict[str, np.ndarray], dict]:
    if head_type == "padim":
        return fit_padim(features, budget_bytes, grid)
    if head_type == "knn":
        return fit_knn(features, knn_channels)
    return fit_patchcore(features, seed, pool_size)


def head_from_arrays(head_type: str, arrays: dict[str, np.ndarray]) -> PadimHead | PatchcoreHead | GlobalKnnHead:
    """The device's head object on freshly fitted arrays (as the device will read them back)."""
    if head_type == "knn":
        return GlobalKnnHead(arrays["channels"], arrays["bank"].astype(np.float32), int(arrays["k"]))
    if head_type == "padim":
        count = arrays["channels"].size
        return PadimHead(arrays["channels"], arrays["mean"], unpack_upper(arrays["precision_upper"], count),
                         tuple(int(v) for v in arrays["grid"]), int(arrays["cell"]))
    return PatchcoreHead(arrays["channels"], arrays["bank"].astype(np.float32), int(arrays["positions"]))


def image_scores(head, features: np.ndarray) -> np.ndarray:
    """Max patch distance per image (the device's image score before smoothing)."""
    channels = head.channels
    return np.array([head.distances(f[:, channels]).max() for f in features])


def choose_head(fit_features: np.ndarray, good: np.ndarray, defective: np.ndarray, budget_bytes: int,
                seed: int, candidates: tuple[str, ...] = ("padim", "patchcore"),
                knn_channels: np.ndarray | None = None, grid: tuple[int, int] | None = None) -> tuple[str, dict]:
    """Fit every candidate head on part of the good images; the one that best separates held-out good images from
    the same images with synthetic defects wins. Returns its name and the measurements."""
    labels = np.r_[np.zeros(len(good)), np.ones(len(defective))]
    measured = {}
    for head_type in candidates:
        arrays, _ = fit_head(head_type, fit_features, budget_bytes, seed, knn_channels, grid, CHOICE_POOL)
        head = head_from_arrays(head_type, arrays)
        scores = np.r_[image_scores(head, good), image_scores(head, defective)]
        measured[head_type] = round(float(roc_auc_score(labels, scores)), 4)
        logger.info("head choice: %s separates %d held-out good images from synthetic defects with AUROC %.4f",
                    head_type, len(good), measured[head_type])
    chosen = max(measured, key=lambda name: (measured[name], -candidates.index(name)))  # a tie: the first listed
    reason = (f"{chosen}: image AUROC {measured[chosen]:.4f} on {len(good)} held-out good images against the same "
              f"images with synthetic defects (" + ", ".join(f"{k} {v:.4f}" for k, v in measured.items()) + ")")
    return chosen, {"auroc_on_synthetic": measured, "reason": reason}
