"""Image-quality gate: blurred, over- or under-exposed and blank frames are `unscorable`, not false fails.

The acceptable ranges are learned at training time from the good images and shipped in the bundle, so
"too dark" means too dark for this part and camera, not for some fixed idea of a photo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

BLANK_CONTRAST = 0.01  # std of a frame with nothing in it (lens cap, dead sensor), in [0, 1] units
BRIGHTNESS_MARGIN = 0.2  # allowed departure of the mean from the good images' range
SATURATION_MARGIN = 0.25  # extra share of clipped pixels allowed beyond the good images' worst
SHARPNESS_FACTOR = 0.3  # a frame this much softer than the softest good images is blurred
SATURATED_LEVEL = 0.98
DARK_LEVEL = 0.02


@dataclass(frozen=True)
class QualityLimits:
    """Ranges of good images, with margins; stored in the bundle."""

    brightness_min: float = 0.0
    brightness_max: float = 1.0
    saturated_max: float = 1.0
    dark_max: float = 1.0
    sharpness_min: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> QualityLimits | None:
        return cls(**data) if data else None


def _share_above(gray: np.ndarray, level: float) -> float:
    _, above = cv2.threshold(gray, level, 1.0, cv2.THRESH_BINARY)
    return cv2.countNonZero(above) / gray.size


def _gray(x: np.ndarray) -> np.ndarray:
    gray = x.reshape(x.shape[:2]) if x.shape[-1] == 1 else cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(gray, dtype=np.float32)  # a no-op for the usual contiguous float32 input


def _sharpness(gray: np.ndarray) -> float:
    _, laplacian_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))
    return float(laplacian_std[0, 0]) ** 2


def measure(x: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, clipped shares and sharpness (variance of the Laplacian) of a model input."""
    gray = _gray(x)
    mean, std = cv2.meanStdDev(gray)
    return {
        "brightness": float(mean[0, 0]),
        "contrast": float(std[0, 0]),
        "saturated": _share_above(gray, SATURATED_LEVEL - 1e-6),
        "dark": 1.0 - _share_above(gray, DARK_LEVEL),
        "sharpness": _sharpness(gray),
    }


def fit_limits(measurements: list[dict[str, float]]) -> QualityLimits:
    """Limits from good training images: their range widened by fixed margins."""
    values = {k: np.array([m[k] for m in measurements]) for k in measurements[0]}
    low, high = (np.percentile(values["brightness"], q) for q in (0.5, 99.5))
    return QualityLimits(
        brightness_min=float(max(0.0, low - BRIGHTNESS_MARGIN)),
        brightness_max=float(min(1.0, high + BRIGHTNESS_MARGIN)),
        saturated_max=float(min(1.0, np.percentile(values["saturated"], 99.5) + SATURATION_MARGIN)),
        dark_max=float(min(1.0, np.percentile(values["dark"], 99.5) + SATURATION_MARGIN)),
        sharpness_min=float(np.percentile(values["sharpness"], 0.5) * SHARPNESS_FACTOR),
    )


def problem(x: np.ndarray, limits: QualityLimits) -> str | None:
    """The reason a frame cannot be judged, or None when it can.

    This runs on every frame, so the clipped shares are computed only when they could break a limit: a share
    of pixels at or above SATURATED_LEVEL cannot exceed mean / SATURATED_LEVEL, and likewise for dark ones.
    The verdict is the same as checking every figure of measure().
    """
    gray = _gray(x)
    mean_, std_ = cv2.meanStdDev(gray)
    mean, contrast = float(mean_[0, 0]), float(std_[0, 0])
    if contrast < BLANK_CONTRAST:
        return f"blank frame (contrast {contrast:.4f})"
    saturated_bound = mean / (SATURATED_LEVEL - 1e-6)
    if mean > limits.brightness_max or saturated_bound > limits.saturated_max:
        saturated = _share_above(gray, SATURATED_LEVEL - 1e-6)
        if mean > limits.brightness_max or saturated > limits.saturated_max:
            return f"overexposed (mean {mean:.3f}, {saturated:.0%} clipped)"
    dark_bound = (1.0 - mean) / (1.0 - DARK_LEVEL)
    if mean < limits.brightness_min or dark_bound > limits.dark_max:
        dark = 1.0 - _share_above(gray, DARK_LEVEL)
        if mean < limits.brightness_min or dark > limits.dark_max:
            return f"underexposed (mean {mean:.3f}, {dark:.0%} black)"
    sharpness = _sharpness(gray)
    if sharpness < limits.sharpness_min:
        return f"blurred (sharpness {sharpness:.2e} < {limits.sharpness_min:.2e})"
    return None
