"""What every feature head shares: the error a bad head raises, the fitting settings, and the array checks.

A head is one class in its own module (see knn.py): `fit` makes its arrays from the good images' patch
features, `from_arrays` checks them and builds the head the device runs. The registry (heads/__init__.py) runs
both paths through the same checks, so a freshly fitted head and one read back from a bundle are validated alike.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

HEAD_FILE = "head.npz"


class HeadError(ValueError):
    """A head file (or freshly fitted arrays) that cannot be used; the message names the file and the problem."""


def _no_progress(items: Iterable, **_: object) -> Iterable:
    return items


@dataclass(frozen=True)
class HeadFit:
    """What fitting a head may use besides the features: (images, positions, channels)."""

    budget_bytes: int = 0  # bytes the rest of the bundle takes (the backbone files)
    seed: int = 0
    layer_channels: tuple[int, ...] = ()  # channels of each backbone layer, finest first
    grid: tuple[int, int] | None = None  # patch rows and columns
    quick: bool = False  # a cheaper fit, good enough to compare heads
    progress: Callable[..., Iterable] = field(default=_no_progress)  # wraps a loop, e.g. tqdm


class Head(Protocol):
    """A feature head: (positions, C) patch features of the chosen channels -> (positions,) distances."""

    type: ClassVar[str]
    channels: np.ndarray  # indices into the concatenated backbone channels

    @staticmethod
    def fit(features: np.ndarray, setting: HeadFit) -> tuple[dict[str, np.ndarray], dict]: ...

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], path: Path) -> Head: ...

    def check_grid(self, grid: tuple[int, int], path: Path) -> None: ...

    def distances(self, features: np.ndarray) -> np.ndarray: ...


def require(arrays: dict[str, np.ndarray], path: Path, *names: str) -> list[np.ndarray]:
    missing = [name for name in names if name not in arrays]
    if missing:
        raise HeadError(f"{path}: missing array(s) {', '.join(missing)}")
    return [arrays[name] for name in names]


def check_arrays(arrays: dict[str, np.ndarray], path: Path, feature_channels: int) -> np.ndarray:
    """Every float finite and `channels` indices below the backbone's channel count; returns the channels."""
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise HeadError(f"{path}: array {name!r} holds a non-finite number")
    (channels,) = require(arrays, path, "channels")
    if channels.ndim != 1 or channels.dtype.kind not in "iu" or channels.size == 0 \
            or channels.min() < 0 or channels.max() >= feature_channels:
        raise HeadError(f"{path}: channels must be indices below {feature_channels}")
    return channels
