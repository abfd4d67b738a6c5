"""PatchCore (Roth et al. 2022): a memory bank of good patches; the distance is to the nearest bank entry,
computed as one matrix product and a minimum."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge.kinds.features.heads.base import HeadError, HeadFit, require

BANK_CHUNK = 4096  # bank entries per matrix product: bounds the temporary (positions x chunk) float32 array
CORESET_FRACTION = 0.01  # of all training patches, as in the PatchCore paper's 1 % setting
CORESET_MAX = 4096  # bank entries at 784 patch positions (224 px); fewer on larger grids, so the device's
CORESET_POSITIONS = 784  # matmul per frame (positions x entries x channels) costs what it costs at 224 px
CORESET_POOL = 100_000  # training patches the greedy selection looks at (a random subset beyond this)
QUICK_POOL = 50_000  # the same for a quick fit (choosing the head): half the selection time, for a comparison only
SOURCE_IMAGES = "_source_images"  # the training image of each bank entry: the trainer's only, never shipped
PROJECTION_DIM = 32  # random projection for the greedy k-center distances (PatchCore's Johnson-Lindenstrauss step)


def greedy_coreset(patches: np.ndarray, size: int, seed: int, progress=lambda items, **_: items) -> np.ndarray:
    """Indices of a greedy k-center coreset (PatchCore): each step adds the patch farthest from those chosen,
    distances taken in a random projection and updated for all patches at once."""
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(patches.shape[1], PROJECTION_DIM)).astype(np.float32) / np.sqrt(PROJECTION_DIM)
    projected = patches @ projection
    chosen = np.empty(size, np.int64)
    chosen[0] = rng.integers(len(patches))
    nearest = np.full(len(patches), np.inf, np.float32)
    for i in progress(range(1, size + 1), desc="coreset", unit="patch"):
        diff = projected - projected[chosen[i - 1]]
        np.minimum(nearest, np.einsum("nd,nd->n", diff, diff), out=nearest)
        if i < size:
            chosen[i] = int(np.argmax(nearest))
    return chosen


@dataclass
class PatchcoreHead:
    type: ClassVar[str] = "patchcore"

    channels: np.ndarray
    bank: np.ndarray  # (entries, C) float32
    positions: int  # patches per frame the bank was built for (a check against the backbone's grid)

    def __post_init__(self) -> None:
        self.bank_t = np.ascontiguousarray(self.bank.T)
        self.bank_sq = np.einsum("nc,nc->n", self.bank, self.bank)

    @staticmethod
    def fit(features: np.ndarray, setting: HeadFit) -> tuple[dict[str, np.ndarray], dict]:
        count, positions, channels = features.shape
        patches = features.reshape(-1, channels)
        rng = np.random.default_rng(setting.seed)
        pool_size = QUICK_POOL if setting.quick else CORESET_POOL
        picked = np.arange(len(patches)) if len(patches) <= pool_size else rng.choice(len(patches), pool_size,
                                                                                      replace=False)
        pool = patches[picked]
        cap = max(1, CORESET_MAX * CORESET_POSITIONS // max(positions, CORESET_POSITIONS))
        size = int(min(cap, max(1, round(len(patches) * CORESET_FRACTION)), len(pool)))
        chosen = greedy_coreset(pool, size, setting.seed, setting.progress)
        arrays = {"channels": np.arange(channels, dtype=np.int32), "bank": pool[chosen].astype(np.float16),
                  "positions": np.array(positions, dtype=np.int64),
                  SOURCE_IMAGES: (picked[chosen] // positions).astype(np.int32)}
        return arrays, {"images": count, "bank_entries": size, "patches": int(len(patches)),
                        "coreset": f"greedy k-center on a {PROJECTION_DIM}-d random projection of {len(pool)} patches",
                        "bank_storage": "float16"}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], path: Path) -> PatchcoreHead:
        channels, bank, positions = require(arrays, path, "channels", "bank", "positions")
        if bank.ndim != 2 or bank.shape[1] != channels.size or bank.shape[0] == 0 or positions.shape != ():
            raise HeadError(f"{path}: bank {bank.shape} does not fit {channels.size} channels")
        return cls(channels, bank.astype(np.float32), int(positions))

    def check_grid(self, grid: tuple[int, int], path: Path) -> None:
        """The bank holds patches, not positions: any grid is scored."""

    @staticmethod
    def without_images(arrays: dict[str, np.ndarray], dropped: np.ndarray) -> dict[str, np.ndarray]:
        """The bank less the entries taken from the dropped training images: a model that has not seen them,
        without a new coreset (cross-fitting calibrates with it)."""
        keep = ~np.isin(arrays[SOURCE_IMAGES], dropped)
        if not keep.any():
            raise HeadError("every bank entry comes from the dropped images")
        return {**arrays, "bank": arrays["bank"][keep], SOURCE_IMAGES: arrays[SOURCE_IMAGES][keep]}

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(positions, C) -> (positions,) Euclidean distance to the nearest bank entry."""
        nearest = np.full(features.shape[0], np.inf, np.float32)
        for start in range(0, self.bank.shape[0], BANK_CHUNK):
            products = features @ self.bank_t[:, start:start + BANK_CHUNK]
            products *= -2.0
            products += self.bank_sq[start:start + BANK_CHUNK]
            np.minimum(nearest, products.min(axis=1), out=nearest)
        nearest += np.einsum("pc,pc->p", features, features)
        return np.sqrt(np.maximum(nearest, 0.0, out=nearest), out=nearest)
