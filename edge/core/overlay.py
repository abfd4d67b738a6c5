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


def seen_rect(frame_shape: tuple[int, ...], spec: PreprocessSpec,
              frame_roi: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the part of the frame the model saw, in frame pixels: the device's ROI, then the bundle's.
    Preprocessing crops to it and resizes it (without letterboxing) to the model size; this undoes the crop."""
    x = y = 0
    height, width = frame_shape[:2]
    for roi in (frame_roi, spec.roi):
        if roi is not None:
            x, y, width, height = x + roi[0], y + roi[1], roi[2], roi[3]
    return x, y, width, height


def render_frame_overlay(image: np.ndarray, heat: np.ndarray, spec: PreprocessSpec, pixel_threshold: float,
                         frame_roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """BGR image of the whole frame, at the frame's own size, with the heatmap resized back onto the part the
    model saw (the inverse of preprocessing's crop and resize) and the rest dimmed: a pixel of it lies where the
    same pixel of the frame does, so region boxes in frame pixels fit both."""
    frame = to_uint8(image)
    base = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    x, y, w, h = seen_rect(frame.shape, spec, frame_roi)
    out = (base * 0.45).astype(np.uint8)
    back = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    out[y:y + h, x:x + w] = cv2.addWeighted(base[y:y + h, x:x + w], 0.5, heat_colors(back, pixel_threshold), 0.5, 0)
    return out
