"""Autoencoders (the study's dense model, the convolutional one): the map is the input's residual from
its reconstruction."""
from __future__ import annotations

import numpy as np

from edge.core.bundle import MANIFEST_NAME, BundleError
from edge.kinds.base import ModelChoice, Pipeline, PipelineOutput
from edge.core.scoring import residual_map


class AutoencoderPipeline(Pipeline):
    kind = "autoencoder"
    choices = (
        ModelChoice("dense", "l1", "sum", {"width": 392, "latent": 64, "batch_size": 128, "steps": 3000,
                                           "learning_rate": 1e-3, "crop": 0}),
        ModelChoice("conv", "l1", "sum", {"width": 32, "latent": 100, "batch_size": 16, "steps": 3000,
                                          "learning_rate": 5e-4, "crop": 0}),
    )

    def __init__(self, bundle, threads: int = 1, use_float_model: bool = False) -> None:
        if bundle.scoring.residual is None:
            raise BundleError(f"{bundle.path / MANIFEST_NAME}: an autoencoder needs scoring.residual")
        super().__init__(bundle, threads, use_float_model)

    def output_shape(self) -> tuple[int, ...]:
        return self.bundle.input_shape  # an image like its input

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> PipelineOutput:
        reconstruction = self.chain.run(x, pixels)
        return PipelineOutput(residual_map(x, reconstruction, self.bundle.scoring), reconstruction)
