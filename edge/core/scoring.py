"""Residual maps, image scores, verdicts, calibration maths and regions: one implementation for trainer and device.

The model kinds in edge.kinds make the anomaly map; from there on every kind is scored the same way.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

RESIDUALS = ("l1", "l2", "ssim", "msgms")  # how a reconstruction becomes a map; kinds that output a map have none
REDUCERS = ("sum", "mean", "max", "topk")
SSIM_SIGMA = 1.5  # Gaussian window of Wang et al. 2004, as in Bergmann et al. 2018
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
GMS_C = 0.0026  # stabilizer of the gradient-magnitude similarity, as in DRAEM's MSGMS
GMS_SCALES = 4


@dataclass(frozen=True)
class ScoringSpec:
    """How an anomaly map is made (for reconstructing kinds), smoothed and reduced to an image score."""

    residual: str | None = "l1"  # the study's |input - reconstruction|; None for kinds that output the map
    reducer: str = "sum"  # the study's image score
    smoothing_sigma: float = 0.0  # Gaussian blur of the anomaly map, in model pixels; 0 = off
    topk_fraction: float = 0.01  # share of pixels averaged by the "topk" reducer
    edge_band: int = 0  # model pixels at each side left out of the map and the score (trainer --edge-band)

    def __post_init__(self) -> None:
        if self.residual is not None and self.residual not in RESIDUALS:
            raise ValueError(f"scoring.residual must be one of {RESIDUALS}, got {self.residual!r}")
        if self.reducer not in REDUCERS:
            raise ValueError(f"scoring.reducer must be one of {REDUCERS}, got {self.reducer!r}")
        if self.smoothing_sigma < 0:
            raise ValueError("scoring.smoothing_sigma must be >= 0")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError("scoring.topk_fraction must be in (0, 1]")
        if isinstance(self.edge_band, bool) or not isinstance(self.edge_band, int) or self.edge_band < 0:
            raise ValueError(f"scoring.edge_band must be a whole number of pixels >= 0, got {self.edge_band!r}")

    def check_size(self, height: int, width: int) -> None:
        """An edge band that leaves nothing to score would pass every part: refused."""
        problem = edge_band_problem(self.edge_band, height, width)
        if problem:
            raise ValueError(f"scoring.edge_band {problem}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoringSpec:
        keys = ("residual", "reducer", "smoothing_sigma", "topk_fraction", "edge_band")
        return cls(**{k: data[k] for k in keys if k in data})


# A threshold set on the device (cmd/threshold, inference.threshold) must lie within the bundle's calibration
# scores, widened by this factor both ways: [min(score_min, threshold) / F, max(score_max, threshold) * F].
# Beyond it a threshold passes or fails everything, which is a broken station, not a setting.
THRESHOLD_RANGE_FACTOR = 10.0


@dataclass(frozen=True)
class Calibration:
    """Threshold and score statistics, fixed at training time and shipped in the bundle."""

    threshold: float
    method: str = "best_f1"  # or "good_quantile"
    score_min: float = 0.0  # normalization range: score_norm = clip((s - threshold) / (max - min) + 0.5)
    score_max: float = 1.0
    pixel_threshold: float = 1.0  # anomaly-map value that counts as an anomalous pixel
    stats: dict[str, float] = field(default_factory=dict)  # good/anomalous score statistics, for people

    def __post_init__(self) -> None:
        # A NaN threshold passes every part (no comparison with NaN is true): refuse it and its kin here,
        # wherever a calibration comes from (a bundle, the trainer, a test).
        for name in ("threshold", "pixel_threshold", "score_min", "score_max"):
            value = getattr(self, name)
            positive = name in ("threshold", "pixel_threshold")
            if not math.isfinite(value) or (positive and value <= 0):
                raise ValueError(f"calibration.{name} is {value!r}; it must be a finite number"
                                 + (" > 0" if positive else ""))
        if self.score_max < self.score_min:
            raise ValueError(f"calibration.score_max ({self.score_max!r}) is below score_min ({self.score_min!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def threshold_range(self) -> tuple[float, float]:
        """The thresholds the device may set for this calibration (a score_min <= 0 is left out)."""
        lowest = min(self.threshold, self.score_min) if self.score_min > 0 else self.threshold
        return lowest / THRESHOLD_RANGE_FACTOR, max(self.score_max, self.threshold) * THRESHOLD_RANGE_FACTOR

    def threshold_problem(self, threshold: float, model_name: str) -> str | None:
        """Why a threshold set on the device is refused for this model, or None when it is within range."""
        low, high = self.threshold_range()
        if low <= threshold <= high:
            return None
        shown = _distinct_figures(threshold, low, high)
        return (f"threshold {shown[0]} is outside {shown[1]} .. {shown[2]}, the range allowed for model "
                f"{model_name} (its calibration scores, widened {THRESHOLD_RANGE_FACTOR:g}x)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        numbers = {name: _number(data, name) for name in ("threshold", "score_min", "score_max", "pixel_threshold")}
        return cls(method=str(data.get("method", "best_f1")), stats=dict(data.get("stats", {})), **numbers)


def _distinct_figures(value: float, *bounds: float) -> list[str]:
    """The value and its bounds with as few digits as still tell them apart ("0.25 is outside 0.25 .." never)."""
    for digits in range(6, 18):
        shown = [f"{number:.{digits}g}" for number in (value, *bounds)]
        if all(shown[0] != bound_text for bound_text, bound in zip(shown[1:], bounds) if bound != value):
            return shown
    return [repr(number) for number in (value, *bounds)]


def _number(data: dict[str, Any], name: str) -> float:
    """A calibration figure from a manifest: a JSON number (not a string or bool that float() would take)."""
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"calibration.{name} is {value!r}; it must be a number")
    try:
        return float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise ValueError(f"calibration.{name} is out of range; it must be a finite number") from None


def _channel_mean(residual: np.ndarray) -> np.ndarray:
    return residual[..., 0] if residual.shape[-1] == 1 else residual.mean(axis=-1)


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (HxWxC -> HxWxC) with a Gaussian window."""
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT).reshape(a.shape)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return numerator / denominator


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 4
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 4
    return np.sqrt(gx * gx + gy * gy)


def msgms_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - multi-scale gradient-magnitude similarity (HxW), averaged over 4 scales (DRAEM's ablation score)."""
    height, width = x.shape[:2]
    a, b = _channel_mean(x).astype(np.float32), _channel_mean(y).astype(np.float32)
    total = np.zeros((height, width), np.float32)
    for _ in range(GMS_SCALES):
        ga, gb = _gradient_magnitude(a), _gradient_magnitude(b)
        gms = (2 * ga * gb + GMS_C) / (ga * ga + gb * gb + GMS_C)
        total += cv2.resize(1.0 - gms, (width, height), interpolation=cv2.INTER_LINEAR)
        if min(a.shape) < 8:
            break
        a, b = cv2.pyrDown(a), cv2.pyrDown(b)
    return total / GMS_SCALES


def residual_map(x: np.ndarray, reconstruction: np.ndarray, spec: ScoringSpec) -> np.ndarray:
    """HxWxC input and its reconstruction in [0, 1] -> HxW float32 residual map (higher = more anomalous)."""
    if spec.residual == "msgms":
        residual = msgms_map(x, reconstruction)[..., None]
    elif spec.residual == "l1":
        residual = np.subtract(x, reconstruction)
        np.abs(residual, out=residual)  # in place: one temporary array instead of two
    elif spec.residual == "l2":
        residual = np.subtract(x, reconstruction)
        np.square(residual, out=residual)
    elif spec.residual == "ssim":
        residual = 1.0 - ssim_map(x, reconstruction)
    else:
        raise ValueError(f"scoring.residual {spec.residual!r} does not make a map from a reconstruction")
    return channel_mean(residual)


def channel_mean(image: np.ndarray) -> np.ndarray:
    """HxWxC -> HxW float32, the mean over channels (a view for one channel)."""
    return _channel_mean(image).astype(np.float32, copy=False)


def smooth(heat: np.ndarray, spec: ScoringSpec) -> np.ndarray:
    """The optional Gaussian blur of an anomaly map, whatever kind made it."""
    if spec.smoothing_sigma > 0:
        return cv2.GaussianBlur(heat, (0, 0), spec.smoothing_sigma, borderType=cv2.BORDER_REFLECT)
    return heat


def edge_band_problem(band: int, height: int, width: int) -> str | None:
    """Why an edge band cannot be used on a height x width model input (it leaves nothing to score), or None."""
    if 2 * band >= min(height, width):
        return f"{band} leaves nothing of the {width}x{height} model input to score"
    return None


def edge_band_mask(shape: tuple[int, int], band: int) -> np.ndarray | None:
    """True on the outer `band` pixels of a model-sized map; None without a band."""
    if band <= 0:
        return None
    mask = np.ones(shape, bool)
    mask[band:shape[0] - band, band:shape[1] - band] = False
    return mask


def image_score(heat: np.ndarray, spec: ScoringSpec, ignore: np.ndarray | None = None) -> float:
    """Reduce an anomaly map to one score; `ignore` is a boolean mask of pixels left out."""
    values = heat[~ignore] if ignore is not None else heat.ravel()
    if values.size == 0:
        return 0.0
    if spec.reducer == "sum":
        return float(values.sum(dtype=np.float64))
    if spec.reducer == "mean":
        return float(values.mean(dtype=np.float64))
    if spec.reducer == "max":
        return float(values.max())
    k = max(1, int(round(values.size * spec.topk_fraction)))
    return float(np.partition(values, values.size - k)[-k:].mean(dtype=np.float64))


def score_heat(heat: np.ndarray, spec: ScoringSpec, ignore: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """What a station makes of a model's anomaly map: smoothed, the ignored pixels zeroed, and its image score."""
    heat = smooth(heat, spec)
    if ignore is not None:
        heat[ignore] = 0.0
    return heat, image_score(heat, spec, ignore)


def normalize_score(score: float, calibration: Calibration) -> float:
    """0..1 score that is exactly 0.5 at the threshold (anomalib's min-max-threshold normalization)."""
    span = max(calibration.score_max - calibration.score_min, 1e-12)
    return float(min(1.0, max(0.0, (score - calibration.threshold) / span + 0.5)))


def fails(scores: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """A part fails when its score reaches the threshold: the one place that says so, for one score or many.
    A NaN score (no comparison with NaN is true) fails too: what cannot be judged never passes."""
    return np.greater_equal(scores, threshold) | np.isnan(scores)


def verdict(score: float, threshold: float) -> str:
    """"fail" or "pass" for one score."""
    return "fail" if fails(score, threshold) else "pass"


def anomalous_regions(
    heat: np.ndarray,
    pixel_threshold: float,
    min_area_px: int = 4,
    scale_xy: tuple[float, float] = (1.0, 1.0),
    offset_xy: tuple[int, int] = (0, 0),
    max_regions: int = 16,
    image_scale: int | None = None,
) -> list[dict[str, Any]]:
    """Bounding boxes of connected areas above the pixel threshold, in source-frame pixels, largest first.
    With ``image_scale`` (overlay pixels per model pixel), each also gives its box in the published heatmap image."""
    mask = (heat >= pixel_threshold).astype(np.uint8)
    if not mask.any():
        return []
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    sx, sy = scale_xy
    ox, oy = offset_xy
    # Largest first (ties in label order), chosen before the per-region work: a noisy map has hundreds.
    areas = boxes[1:, cv2.CC_STAT_AREA]
    kept = np.flatnonzero(areas >= min_area_px)
    largest = kept[np.argsort(-areas[kept], kind="stable")][:max_regions] + 1
    regions = []
    for label in largest.tolist():
        x, y, w, h, area = (int(v) for v in boxes[label])
        peak = float(heat[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label].max())
        regions.append({
            "x": int(ox + x * sx), "y": int(oy + y * sy),
            "w": max(1, int(round(w * sx))), "h": max(1, int(round(h * sy))),
            "area_px": area, "peak": round(peak, 6),
        })
        if image_scale is not None:
            regions[-1]["heatmap"] = {"x": x * image_scale, "y": y * image_scale,
                                      "w": w * image_scale, "h": h * image_scale}
    return regions


def heat_colors(heat: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """BGR colour image of a heatmap on a fixed scale: the pixel threshold is always mid-scale."""
    level = np.clip(heat / (2.0 * max(pixel_threshold, 1e-12)), 0.0, 1.0)
    return cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
