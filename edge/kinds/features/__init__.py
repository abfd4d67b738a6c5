"""ImageNet features: a pretrained backbone (edge.kinds.components.backbone), then a head in numpy
(edge.kinds.features.heads) that turns every patch into a distance from the good parts' statistics.

The patch distances are upsampled to the model input; the shared scoring smooths them (scoring.smoothing_sigma)
and reduces them to the image score.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.core.bundle import MANIFEST_NAME, Bundle, BundleError
from edge.kinds.base import ModelChoice, Pipeline, PipelineOutput
from edge.kinds.components.backbone import BackboneFeatures, backbone_input_mapping
from edge.kinds.features.heads import Head, HeadError, load_head

BACKBONE_STRIDE = 8  # of the finest layer: the patch grid


def distance_heat(distances: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """One image's patch distances (a value per grid position) as the model-sized (height, width) anomaly map."""
    height, width = size
    return cv2.resize(distances.reshape(grid), (width, height), interpolation=cv2.INTER_LINEAR)


class FeaturesPipeline(Pipeline):
    kind = "features"
    # Nothing to train by gradient descent: statistics of ImageNet features. PaDiM's smoothing, sigma 4 px. The
    # backbone's native input is 224 px; small images reach it enlarged (trainer.small_choice), large frames
    # (screw, 512 px) at 320 px: image AUROC 0.958 against 0.941 at 224 (README).
    choices = (ModelChoice("features", None, "max",
                           {"width": 0, "latent": 0, "batch_size": 0, "steps": 0, "learning_rate": 0.0, "crop": 0,
                            "smoothing_sigma": 4.0}, default_side=224, small_upscale=2, large_side=320),)

    def __init__(self, bundle: Bundle, threads: int = 1, use_float_model: bool = False) -> None:
        super().__init__(bundle, threads, use_float_model)
        if len(self.chain.stages) != 1:
            raise BundleError(f"{bundle.path / MANIFEST_NAME}: the features kind runs one backbone stage, "
                              f"not {len(self.chain.stages)}")
        self.features = BackboneFeatures(self.chain.stages[0], *backbone_input_mapping(bundle.architecture))
        self.head = self._load_head(bundle)
        self.all_channels = np.array_equal(self.head.channels, np.arange(self.features.channels))

    def _load_head(self, bundle: Bundle) -> Head:
        manifest = bundle.path / MANIFEST_NAME
        head = bundle.architecture.get("head") if isinstance(bundle.architecture, dict) else None
        if not isinstance(head, dict) or not all(isinstance(head.get(key), str) for key in ("type", "file", "sha256")):
            raise BundleError(f"{manifest}: architecture.head must name the head's type, file and sha256")
        if head["file"] != bundle.path.joinpath(head["file"]).name:
            raise BundleError(f"{manifest}: architecture.head.file must be a plain file name inside the bundle")
        path = bundle.path / head["file"]
        try:
            loaded = load_head(path, head["type"], head["sha256"], self.features.channels)
            loaded.check_grid(self.features.grid, path)
        except HeadError as exc:
            raise BundleError(str(exc)) from None
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
        _, height, width, _ = self.bundle.input_shape
        return PipelineOutput(distance_heat(self.head.distances(features), self.features.grid, (height, width)))
