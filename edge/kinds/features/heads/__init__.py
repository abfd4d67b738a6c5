"""Heads of the `features` kind: backbone patch features -> one anomaly distance per patch, in vectorised numpy.

The head's parameters live in the bundle as an .npz file whose sha256 model.json records; a file that does not
match, will not load, or holds a non-finite number stops the bundle from loading (fail closed).

- padim: one Gaussian per patch position (Defard et al. 2021); the distance is the Mahalanobis distance. The
  precision matrices are stored as float16 upper triangles (half the bytes of the full matrices). With `cell` 2,
  each 2x2 block of positions shares one covariance (each position keeps its own mean): a quarter of the memory
  the device reads per frame, applied as one batched matrix product per block.
- patchcore: a memory bank of good patches (Roth et al. 2022); the distance is to the nearest bank entry,
  computed as one matrix product and a minimum.
- knn: for small images, one vector per image: the patch features averaged over the grid and L2-normalised; the
  distance is the mean distance to the k nearest good training images' vectors (the same for every patch).
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_FILE = "head.npz"
HEAD_TYPES = ("padim", "patchcore", "knn")
BANK_CHUNK = 4096  # bank entries per matrix product: bounds the temporary (positions x chunk) float32 array


class HeadError(ValueError):
    """A head file that cannot be used; the message names the file and the problem."""


def pack_upper(matrices: np.ndarray) -> np.ndarray:
    """(..., C, C) symmetric -> (..., C(C+1)/2) upper triangle, row by row."""
    rows, cols = np.triu_indices(matrices.shape[-1])
    return matrices[..., rows, cols]


def unpack_upper(packed: np.ndarray, channels: int) -> np.ndarray:
    """The inverse of pack_upper, as float32 symmetric matrices."""
    rows, cols = np.triu_indices(channels)
    full = np.zeros((*packed.shape[:-1], channels, channels), np.float32)
    full[..., rows, cols] = packed
    full[..., cols, rows] = packed
    return full


def patch_features(maps: list[np.ndarray], channels: np.ndarray | None = None) -> np.ndarray:
    """Backbone feature maps (finest first, each h x w x c at twice the stride of the one before) ->
    (positions, channels) on the finest grid; coarser maps are repeated to it (nearest neighbour)."""
    height, width = maps[0].shape[:2]
    grid = [maps[0]]
    for coarse in maps[1:]:
        factor_y, factor_x = -(-height // coarse.shape[0]), -(-width // coarse.shape[1])
        grid.append(np.repeat(np.repeat(coarse, factor_y, axis=0), factor_x, axis=1)[:height, :width])
    features = np.concatenate(grid, axis=-1).reshape(height * width, -1)
    return features if channels is None else features[:, channels]


def cell_order(grid: tuple[int, int], cell: int) -> np.ndarray:
    """Position indices (row-major on the grid) ordered block by block: cell x cell positions per block."""
    height, width = grid
    index = np.arange(height * width).reshape(height // cell, cell, width // cell, cell)
    return index.transpose(0, 2, 1, 3).reshape(-1)


@dataclass
class PadimHead:
    channels: np.ndarray  # indices into the concatenated backbone channels
    mean: np.ndarray  # (positions, C) float32
    precision: np.ndarray  # (blocks, C, C) float32, unpacked from the file's float16 triangles
    grid: tuple[int, int] = (0, 0)  # patch rows and columns; needed when cell > 1
    cell: int = 1  # side of the block of positions that shares one covariance

    def __post_init__(self) -> None:
        if self.cell > 1:
            self.order = cell_order(self.grid, self.cell)
            self.restore = np.argsort(self.order)

    @property
    def positions(self) -> int:
        return self.mean.shape[0]

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(positions, C) -> (positions,) Mahalanobis distances."""
        diff = features - self.mean
        if self.cell == 1:
            weighted = np.matmul(self.precision, diff[:, :, None])[:, :, 0]
            squared = np.einsum("pc,pc->p", diff, weighted)
        else:  # (blocks, cell², C) @ (blocks, C, C): the precision matrices are symmetric
            blocks = diff[self.order].reshape(self.precision.shape[0], self.cell * self.cell, -1)
            weighted = np.matmul(blocks, self.precision)
            squared = np.einsum("bkc,bkc->bk", blocks, weighted).reshape(-1)[self.restore]
        return np.sqrt(np.maximum(squared, 0.0, out=squared), out=squared)


@dataclass
class PatchcoreHead:
    channels: np.ndarray
    bank: np.ndarray  # (entries, C) float32
    positions: int  # patches per frame the bank was built for (a check against the backbone's grid)

    def __post_init__(self) -> None:
        self.bank_t = np.ascontiguousarray(self.bank.T)
        self.bank_sq = np.einsum("nc,nc->n", self.bank, self.bank)

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


@dataclass
class GlobalKnnHead:
    channels: np.ndarray
    bank: np.ndarray  # (images, C) float32, L2-normalised pooled features of the good training images
    k: int

    def image_distance(self, features: np.ndarray) -> float:
        """Mean Euclidean distance of the frame's pooled, L2-normalised vector to its k nearest bank vectors."""
        pooled = features.mean(axis=0)
        pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
        squared = np.maximum(2.0 - 2.0 * (self.bank @ pooled), 0.0)  # both sides have unit length
        nearest = np.partition(squared, self.k - 1)[: self.k] if squared.size > self.k else squared
        return float(np.sqrt(nearest).mean())

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(positions, C) -> (positions,): the image's distance at every patch (a global head has no map)."""
        return np.full(features.shape[0], self.image_distance(features), np.float32)


def _arrays(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeadError(f"{path}: cannot read the head file: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise HeadError(f"{path}: sha256 {actual[:12]}… does not match model.json ({str(expected_sha256)[:12]}…); "
                        "the head file is corrupt or from another bundle")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise HeadError(f"{path}: not a readable head file: {exc}") from None
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise HeadError(f"{path}: array {name!r} holds a non-finite number")
    return arrays


def _require(arrays: dict[str, np.ndarray], path: Path, *names: str) -> list[np.ndarray]:
    missing = [name for name in names if name not in arrays]
    if missing:
        raise HeadError(f"{path}: missing array(s) {', '.join(missing)}")
    return [arrays[name] for name in names]


def load_head(path: Path, head_type: str, sha256: str, feature_channels: int) -> PadimHead | PatchcoreHead | GlobalKnnHead:
    """Read, verify and check a head file against the backbone's channel count."""
    if head_type not in HEAD_TYPES:
        raise HeadError(f"{path}: head type {head_type!r} is not one of {', '.join(HEAD_TYPES)}")
    arrays = _arrays(path, sha256)
    (channels,) = _require(arrays, path, "channels")
    if channels.ndim != 1 or channels.dtype.kind not in "iu" or channels.size == 0 \
            or channels.min() < 0 or channels.max() >= feature_channels:
        raise HeadError(f"{path}: channels must be indices below {feature_channels}")
    count = channels.size
    if head_type == "padim":
        mean, packed = _require(arrays, path, "mean", "precision_upper")
        cell = int(arrays["cell"]) if "cell" in arrays else 1
        grid = tuple(int(v) for v in arrays["grid"]) if "grid" in arrays else (mean.shape[0], 1)
        blocks = mean.shape[0] // (cell * cell)
        if mean.ndim != 2 or mean.shape[1] != count or packed.shape != (blocks, count * (count + 1) // 2) \
                or cell < 1 or len(grid) != 2 or grid[0] % cell or grid[1] % cell or grid[0] * grid[1] != mean.shape[0]:
            raise HeadError(f"{path}: mean {mean.shape}, precision_upper {packed.shape}, grid {grid} and cell {cell} "
                            f"do not fit {count} channels")
        return PadimHead(channels, mean.astype(np.float32), unpack_upper(packed, count), grid, cell)
    if head_type == "knn":
        bank, k = _require(arrays, path, "bank", "k")
        if bank.ndim != 2 or bank.shape[1] != count or k.shape != () or not 1 <= int(k) <= bank.shape[0]:
            raise HeadError(f"{path}: bank {bank.shape} and k {k} do not fit {count} channels")
        return GlobalKnnHead(channels, bank.astype(np.float32), int(k))
    bank, positions = _require(arrays, path, "bank", "positions")
    if bank.ndim != 2 or bank.shape[1] != count or bank.shape[0] == 0 or positions.shape != ():
        raise HeadError(f"{path}: bank {bank.shape} does not fit {count} channels")
    return PatchcoreHead(channels, bank.astype(np.float32), int(positions))
