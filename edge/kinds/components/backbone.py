"""A pretrained backbone (one TFLite stage with one output per chosen layer) as a patch-feature extractor.

The device scores with it and the trainer fits heads on exactly these features.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def backbone_input_mapping(architecture: dict[str, Any]) -> tuple[float, float]:
    """(scale, zero): pixel value p (0..255) reaches the backbone as the real value (p - zero) * scale."""
    backbone = architecture.get("backbone") or {}
    return float(backbone.get("input_scale", 1 / 127.5)), float(backbone.get("input_zero", 127.0))


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


class BackboneFeatures:
    """A backbone stage as a patch-feature extractor: frame -> (positions, channels)."""

    def __init__(self, stage, input_scale: float, input_zero: float) -> None:
        self.stage = stage
        self.input_scale, self.input_zero = np.float32(input_scale), np.float32(input_zero)
        # An int8 backbone whose input quantization is this mapping takes the uint8 pixels as they are.
        stage.takes_raw_uint8 = (stage.input_dtype == np.uint8 and abs(stage.input_scale - input_scale) < 1e-9
                                 and stage.input_zero == input_zero)
        self.grid = tuple(stage.output_shape[1:3])
        self.layer_channels = (stage.output_shape[-1], *(shape[-1] for _, shape, *_ in stage.extra_outputs))
        self.channels = sum(self.layer_channels)

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        gray = pixels.shape[-1] == 1  # ImageNet backbones see gray as three equal channels
        if self.stage.takes_raw_uint8 and pixels.dtype == np.uint8:
            maps = self.stage.run_all(None, np.repeat(pixels, 3, axis=-1) if gray else pixels)
        else:
            real = (np.repeat(x, 3, axis=-1) if gray else x) * np.float32(255.0)
            real -= self.input_zero
            real *= self.input_scale
            maps = self.stage.run_all(real)
        return patch_features(maps)
