"""What good parts looked like at training time, shipped in the bundle for the drift watch (edge.drift).

The reference holds quantiles, not samples: the good-score distribution (from the scores the threshold was
calibrated on: out of fold, held out, or the labelled test set's good images) and, per image figure
(brightness = mean, contrast = standard deviation, sharpness = variance of the Laplacian, as edge.core.quality
measures them on the model input), the training images' distribution. Quantiles are enough to turn a new value
into its rank among the good ones, which is all the drift statistic uses.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUANTILES = 101  # 0 %, 1 %, ... 100 %
IMAGE_FIGURES = ("brightness", "contrast", "sharpness")


@dataclass(frozen=True)
class Distribution:
    """Quantiles at 0, 1/(Q-1), ... 1 of a figure, how many values they summarize and where they came from."""

    quantiles: tuple[float, ...]
    n: int
    source: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.quantiles, dtype=np.float64)
        if values.size < 2 or not np.all(np.isfinite(values)) or np.any(np.diff(values) < 0):
            raise ValueError("reference quantiles must be at least two finite numbers in ascending order")
        if self.n < 1:
            raise ValueError("a reference needs at least one value")

    @classmethod
    def of(cls, values: Iterable[float], source: str = "") -> Distribution:
        data = np.asarray(list(values), dtype=np.float64)
        data = data[np.isfinite(data)]
        if data.size == 0:
            raise ValueError("no finite values to make a reference from")
        return cls(tuple(float(v) for v in np.quantile(data, np.linspace(0.0, 1.0, QUANTILES))), int(data.size),
                   source)

    @property
    def median(self) -> float:
        return float(np.interp(0.5, np.linspace(0.0, 1.0, len(self.quantiles)), self.quantiles))

    def to_dict(self) -> dict[str, Any]:
        return {"quantiles": list(self.quantiles), "n": self.n, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Distribution:
        return cls(tuple(float(v) for v in data["quantiles"]), int(data["n"]), str(data.get("source", "")))


@dataclass(frozen=True)
class DriftReference:
    """The good-score distribution and the training images' figures; either may be missing in older bundles."""

    scores: Distribution | None = None
    image: dict[str, Distribution] = field(default_factory=dict)  # IMAGE_FIGURES -> distribution

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.to_dict() if self.scores else None,
                "image": {name: dist.to_dict() for name, dist in self.image.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DriftReference | None:
        if not data:
            return None
        unknown = set(data.get("image") or {}) - set(IMAGE_FIGURES)
        if unknown:
            raise ValueError(f"reference.image has unknown figures {sorted(unknown)}; known: {list(IMAGE_FIGURES)}")
        scores = data.get("scores")
        return cls(scores=Distribution.from_dict(scores) if scores else None,
                   image={name: Distribution.from_dict(d) for name, d in (data.get("image") or {}).items()})


def image_reference(measurements: list[dict[str, float]], source: str) -> dict[str, Distribution]:
    """The image figures' distributions from edge.core.quality.measure of good images."""
    return {name: Distribution.of((m[name] for m in measurements), source) for name in IMAGE_FIGURES}
