"""One frame's path: preprocess -> the bundle's model kind (anomaly map) -> score -> verdict.

`lineguard score`, `lineguard evaluate`, the trainer's calibration and the daemon all call Inspector.inspect,
so every figure they report comes from the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import logging

import cv2
import numpy as np

from edge.core import scoring
from edge.core.overlay import overlay_scale
from edge.core.bundle import Bundle, BundleError, load_bundle
from edge.kinds import open_pipeline
from edge.core.preprocess import ImageError, PreprocessSpec, crop, read_image, scale, to_pixels
from edge.core.quality import problem

logger = logging.getLogger(__name__)

Polygon = list[tuple[float, float]]


@dataclass
class Inspection:
    """The outcome for one frame."""

    score: float
    score_norm: float
    threshold: float
    verdict: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    heat: np.ndarray | None = None  # HxW anomaly map in model pixels
    model_input: np.ndarray | None = None  # HxWxC float in [0, 1]
    reconstruction: np.ndarray | None = None  # for kinds that reconstruct their input
    reason: str | None = None  # why a frame is unscorable


class Inspector:
    """Scores frames with a bundle. Not thread-safe: one per inference thread."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        threads: int = 1,
        use_float_model: bool = False,
        roi: tuple[int, int, int, int] | None = None,
        ignore_mask: np.ndarray | None = None,
        ignore_polygons: list[Polygon] | None = None,
        threshold: float | None = None,
        min_region_px: int = 4,
        quality_gate: bool = True,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_float=use_float_model)
        self.pipeline = open_pipeline(self.bundle, threads=threads, use_float_model=use_float_model)
        logger.info("bundle %s: %s, %d stage(s)%s", self.bundle.name, self.bundle.kind,
                    len(self.bundle.stages), " (float)" if use_float_model else "")
        self.spec: PreprocessSpec = self.bundle.preprocess
        self.frame_roi = roi  # the device's crop, applied before the bundle's own preprocessing
        self.calibration = self.bundle.calibration
        self.threshold = float(threshold) if threshold is not None else self.calibration.threshold
        self.ignore_masks = [m for m in (self.bundle.ignore_mask(), ignore_mask) if m is not None]
        self.ignore_polygons = list(self.bundle.ignore_polygons) + list(ignore_polygons or [])
        self.base_polygons = list(self.ignore_polygons)  # the bundle's and the config's; a stored mask adds to them
        self.stored_polygons: list[Polygon] = []  # drawn on the station page (edge.mask_store)
        self.mask_dropped = None  # another model's stored mask, not applied (set by edge.startup.build_inspector)
        self.frame_size: tuple[int, int] | None = None  # (height, width) of the last frame inspected
        self._ignore_by_shape: dict[tuple[int, int], np.ndarray | None] = {}
        self.min_region_px = min_region_px
        self.quality = self.bundle.quality if quality_gate else None

    def _ignore_pixels(self, frame_shape: tuple[int, ...]) -> np.ndarray | None:
        """Ignored model pixels for frames of this size: masks and polygons drawn on the whole frame, then
        cropped and resized exactly like the frame. Cached per frame size."""
        key = tuple(frame_shape[:2])
        if key not in self._ignore_by_shape:
            self._ignore_by_shape[key] = self._rasterize_ignore(key)
        return self._ignore_by_shape[key]

    def _rasterize_ignore(self, frame_size: tuple[int, int]) -> np.ndarray | None:
        band = scoring.edge_band_mask((self.spec.height, self.spec.width), self.bundle.scoring.edge_band)
        if not self.ignore_masks and not self.ignore_polygons:
            return band
        height, width = frame_size
        canvas = np.zeros((height, width), np.uint8)
        for mask in self.ignore_masks:
            gray = mask if mask.ndim == 2 else mask.max(axis=2)
            canvas |= (cv2.resize(gray, (width, height), interpolation=cv2.INTER_NEAREST) > 0).astype(np.uint8)
        for polygon in self.ignore_polygons:
            cv2.fillPoly(canvas, [np.round(np.asarray(polygon, dtype=np.float64)).astype(np.int32)], 1)
        region = crop(crop(canvas, self.frame_roi), self.spec.roi)
        ignored = cv2.resize(region, (self.spec.width, self.spec.height), interpolation=cv2.INTER_NEAREST) > 0
        return ignored if band is None else ignored | band

    def set_stored_polygons(self, polygons: list[Polygon]) -> None:
        """Ignore these polygons (frame pixels) besides the bundle's and the config's, from the next frame."""
        self.stored_polygons = [list(p) for p in polygons]
        self.ignore_polygons = self.base_polygons + self.stored_polygons
        self._ignore_by_shape = {}

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def _normalization(self) -> scoring.Calibration:
        """The calibration with the threshold in force; rebuilt when either changes, not per frame."""
        source, threshold, normalization = getattr(self, "_normalization_cache", (None, None, None))
        if source is not self.calibration or threshold != self.threshold:
            normalization = replace(self.calibration, threshold=self.threshold)
            self._normalization_cache = (self.calibration, self.threshold, normalization)
        return normalization

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
        self.frame_size = (int(frame_shape[0]), int(frame_shape[1]))
        frame = crop(frame, self.frame_roi)
        pixels = to_pixels(frame, self.spec, bgr=bgr)
        x = scale(pixels)
        output = self.pipeline(x, pixels)
        heat, score = scoring.score_heat(output.heat, self.bundle.scoring, self._ignore_pixels(frame_shape))
        regions = []
        decision = scoring.verdict(score, self.threshold)
        reason = problem(x, self.quality) if self.quality is not None else None
        if reason is not None:
            decision = "unscorable"
        elif decision == "fail":
            scale_xy, offset_xy = self._geometry(frame_shape)
            regions = scoring.anomalous_regions(
                heat, self.calibration.pixel_threshold, self.min_region_px, scale_xy, offset_xy,
                image_scale=overlay_scale(self.spec),
            )
        return Inspection(
            score=score,
            score_norm=scoring.normalize_score(score, self._normalization()),
            threshold=self.threshold,
            verdict=decision,
            regions=regions,
            heat=heat,
            model_input=x if keep_images else None,
            reconstruction=output.reconstruction if keep_images else None,
            reason=reason,
        )

    def inspect_file(self, path: str | Path, keep_images: bool = False) -> Inspection:
        """Score an image file, read in the bundle's colour mode."""
        image = read_image(path, self.spec.color)
        try:
            return self.inspect(image, keep_images=keep_images)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None


__all__ = ["Inspector", "Inspection", "BundleError", "ImageError"]
