"""The picture people look at: a frame blended with its heatmap, colours anchored to the pixel threshold."""
from __future__ import annotations

import cv2
import numpy as np

from edge.core.preprocess import PreprocessSpec, crop, to_uint8
from edge.core.scoring import heat_colors

OVERLAY_MIN_SIDE_PX = 256  # small model inputs are enlarged so a person can see the defect


def overlay_scale(spec: PreprocessSpec) -> int:
    """Overlay pixels per model pixel: the heatmap image is the model's grid enlarged by this whole factor."""
    return max(1, OVERLAY_MIN_SIDE_PX // max(spec.width, spec.height))


def render_overlay(image: np.ndarray, heat: np.ndarray, spec: PreprocessSpec, pixel_threshold: float,
                   frame_roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """BGR image of the model's view of the frame with the heatmap blended in, at least 256 px on a side. The
    frame is cropped as the model saw it (the device's ROI, then the bundle's), so heat lies on the part it is of."""
    colors = heat_colors(heat, pixel_threshold)
    seen = crop(crop(to_uint8(image), frame_roi), spec.roi)
    base = cv2.resize(seen, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR) if base.ndim == 2 else base
    blended = cv2.addWeighted(base, 0.5, colors, 0.5, 0)
    factor = overlay_scale(spec)
    return cv2.resize(blended, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor > 1 else blended
