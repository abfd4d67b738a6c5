"""One frame's path through the model: preprocess -> reconstruct -> residual map -> score -> verdict.

`lineguard score`, `lineguard evaluate`, the trainer's calibration and the daemon all call Inspector.inspect,
so every figure they report comes from the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge import scoring
from edge.bundle import Bundle, BundleError, check_model_shapes, load_bundle
from edge.preprocess import ImageError, PreprocessSpec, crop, read_image, scale, to_pixels
from edge.runtime import Reconstructor


@dataclass
class Inspection:
    """The outcome for one frame."""

    score: float
    score_norm: float
    threshold: float
    verdict: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    heat: np.ndarray | None = None  # HxW residual map in model pixels
    model_input: np.ndarray | None = None  # HxWxC float in [0, 1]
    reconstruction: np.ndarray | None = None


class Inspector:
    """Scores frames with a bundle. Not thread-safe: one per inference thread."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        threads: int = 1,
        use_float_model: bool = False,
        roi: tuple[int, int, int, int] | None = None,
        ignore_mask: np.ndarray | None = None,
        threshold: float | None = None,
        min_region_px: int = 4,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_float=use_float_model)
        model_path = self.bundle.float_model_path if use_float_model else self.bundle.model_path
        self.model = Reconstructor(model_path, threads=threads)
        check_model_shapes(self.bundle, self.model.input_shape, self.model.output_shape, model_path)
        self.spec: PreprocessSpec = self.bundle.preprocess
        self.frame_roi = roi  # the device's crop, applied before the bundle's own preprocessing
        self.calibration = self.bundle.calibration
        self.threshold = float(threshold) if threshold is not None else self.calibration.threshold
        self.ignore = self._ignore_pixels(ignore_mask)
        self.min_region_px = min_region_px

    def _ignore_pixels(self, mask: np.ndarray | None) -> np.ndarray | None:
        """A mask image (non-zero = ignore) in model pixels, as a boolean array."""
        if mask is None:
            return None
        gray = mask if mask.ndim == 2 else mask.max(axis=2)
        resized = cv2.resize(gray, (self.spec.width, self.spec.height), interpolation=cv2.INTER_NEAREST)
        return resized > 0

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def _geometry(self, frame_shape: tuple[int, ...]) -> tuple[tuple[float, float], tuple[int, int]]:
        """Scale and offset from model pixels back to source-frame pixels, for region boxes."""
        ox = oy = 0
        height, width = frame_shape[:2]
        for roi in (self.frame_roi, self.spec.roi):
            if roi is not None:
                ox, oy, width, height = ox + roi[0], oy + roi[1], roi[2], roi[3]
        return (width / self.spec.width, height / self.spec.height), (ox, oy)

    def inspect(self, frame: np.ndarray, bgr: bool = False, keep_images: bool = False) -> Inspection:
        """Score one frame (gray, RGB, or BGR from a camera with bgr=True)."""
        frame_shape = frame.shape
        frame = crop(frame, self.frame_roi)
        pixels = to_pixels(frame, self.spec, bgr=bgr)
        x = scale(pixels)
        reconstruction = self.model.reconstruct(x, pixels=pixels)
        heat = scoring.residual_map(x, reconstruction, self.bundle.scoring)
        if self.ignore is not None:
            heat[self.ignore] = 0.0
        score = scoring.image_score(heat, self.bundle.scoring, self.ignore)
        regions = []
        decision = scoring.verdict(score, self.threshold)
        if decision == "fail":
            scale_xy, offset_xy = self._geometry(frame_shape)
            regions = scoring.anomalous_regions(
                heat, self.calibration.pixel_threshold, self.min_region_px, scale_xy, offset_xy
            )
        return Inspection(
            score=score,
            score_norm=scoring.normalize_score(score, replace(self.calibration, threshold=self.threshold)),
            threshold=self.threshold,
            verdict=decision,
            regions=regions,
            heat=heat,
            model_input=x if keep_images else None,
            reconstruction=reconstruction if keep_images else None,
        )

    def inspect_file(self, path: str | Path, keep_images: bool = False) -> Inspection:
        """Score an image file, read in the bundle's colour mode."""
        image = read_image(path, self.spec.color)
        try:
            return self.inspect(image, keep_images=keep_images)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None


__all__ = ["Inspector", "Inspection", "BundleError", "ImageError"]
