"""The synthetic-defect segmenter (a small U-Net): the model outputs the anomaly map itself."""
from __future__ import annotations

import numpy as np

from edge.core.bundle import MANIFEST_NAME, BundleError
from edge.kinds.base import ModelChoice, Pipeline, PipelineOutput
from edge.core.scoring import channel_mean


class SegmenterPipeline(Pipeline):
    kind = "segmenter"
    choices = (ModelChoice("segmenter", None, "max", {"width": 8, "latent": 0, "batch_size": 8, "steps": 3000,
                                                      "learning_rate": 2e-3, "crop": 0}),)

    def __init__(self, bundle, threads: int = 1, use_float_model: bool = False) -> None:
        if bundle.scoring.residual is not None:
            raise BundleError(f"{bundle.path / MANIFEST_NAME}: a segmenter outputs its map; "
                              f"scoring.residual must be null, not {bundle.scoring.residual!r}")
        super().__init__(bundle, threads, use_float_model)

    def output_shape(self) -> tuple[int, ...]:
        return (*self.bundle.input_shape[:3], 1)  # one defect probability per pixel

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> PipelineOutput:
        return PipelineOutput(channel_mean(self.chain.run(x, pixels)))
