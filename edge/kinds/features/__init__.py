"""ImageNet features: a pretrained backbone (one TFLite stage with one output per chosen layer), then a head in
numpy (edge.kinds.features.heads) that turns every patch into a distance from the good parts' statistics.

The patch distances are upsampled to the model input; the shared scoring smooths them (scoring.smoothing_sigma)
and reduces them to the image score.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge.core.bundle import MANIFEST_NAME, Bundle, BundleError
from edge.kinds.features.heads import HeadError, load_head, patch_features
from edge.kinds.base import Pipeline, PipelineOutput

BACKBONE_STRIDE = 8  # of the finest layer: the patch grid


def backbone_input_mapping(architecture: dict[str, Any]) -> tuple[float, float]:
    """(scale, zero): pixel value p (0..255) reaches the backbone as the real value (p - zero) * scale."""
    backbone = architecture.get("backbone") or {}
    return float(backbone.get("input_scale", 1 / 127.5)), float(backbone.get("input_zero", 127.0))


class BackboneFeatures:
    """A backbone stage as a patch-feature extractor: frame -> (positions, channels). The trainer fits heads on
    exactly these features."""

    def __init__(self, stage, input_scale: float, input_zero: float) -> None:
        self.stage = stage
        self.input_scale, self.input_zero = np.float32(input_scale), np.float32(input_zero)
        # An int8 backbone whose input quantization is this mapping takes the uint8 pixels as they are.
        stage.takes_raw_uint8 = (stage.input_dtype == np.uint8 and abs(stage.input_scale - input_scale) < 1e-9
                                 and stage.input_zero == input_zero)
        self.grid = tuple(stage.output_shape[1:3])
        self.channels = stage.output_shape[-1] + sum(shape[-1] for _, shape, *_ in stage.extra_outputs)

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


class FeaturesPipeline(Pipeline):
    kind = "features"

    def __init__(self, bundle: Bundle, threads: int = 1, use_float_model: bool = False) -> None:
        super().__init__(bundle, threads, use_float_model)
        if len(self.chain.stages) != 1:
            raise BundleError(f"{bundle.path / MANIFEST_NAME}: the features kind runs one backbone stage, "
                              f"not {len(self.chain.stages)}")
        self.features = BackboneFeatures(self.chain.stages[0], *backbone_input_mapping(bundle.architecture))
        self.head = self._load_head(bundle)
        self.all_channels = np.array_equal(self.head.channels, np.arange(self.features.channels))

    def _load_head(self, bundle: Bundle):
        manifest = bundle.path / MANIFEST_NAME
        head = bundle.architecture.get("head") if isinstance(bundle.architecture, dict) else None
        if not isinstance(head, dict) or not all(isinstance(head.get(key), str) for key in ("type", "file", "sha256")):
            raise BundleError(f"{manifest}: architecture.head must name the head's type, file and sha256")
        if head["file"] != bundle.path.joinpath(head["file"]).name:
            raise BundleError(f"{manifest}: architecture.head.file must be a plain file name inside the bundle")
        try:
            loaded = load_head(bundle.path / head["file"], head["type"], head["sha256"], self.features.channels)
        except HeadError as exc:
            raise BundleError(str(exc)) from None
        positions = self.features.grid[0] * self.features.grid[1]
        if head["type"] == "padim" and (loaded.positions != positions
                                        or (loaded.cell > 1 and loaded.grid != self.features.grid)):
            raise BundleError(f"{bundle.path / head['file']}: holds {loaded.positions} patch positions, the "
                              f"backbone gives {positions} at {self.bundle.preprocess.width}x"
                              f"{self.bundle.preprocess.height}")
        return loaded

    def model_input_shape(self) -> tuple[int, ...]:
        return (*self.bundle.input_shape[:3], 3)  # gray frames reach the backbone as three equal channels

    def output_shape(self) -> tuple[int, ...]:
        _, height, width, _ = self.bundle.input_shape
        first = (self.bundle.architecture.get("backbone") or {}).get("channels", [32])[0]
        return (1, -(-height // BACKBONE_STRIDE), -(-width // BACKBONE_STRIDE), int(first))

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> PipelineOutput:
        features = self.features(x, pixels)
        if not self.all_channels:
            features = features[:, self.head.channels]
        distance = self.head.distances(features).reshape(self.features.grid)
        _, height, width, _ = self.bundle.input_shape
        return PipelineOutput(cv2.resize(distance, (width, height), interpolation=cv2.INTER_LINEAR))
