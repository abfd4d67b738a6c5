"""What every model kind shares: its stages loaded from the bundle and checked against the manifest."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edge.core.bundle import Bundle, check_model_shapes
from edge.core.runtime import StageChain


@dataclass
class PipelineOutput:
    """A model kind's answer for one frame."""

    heat: np.ndarray  # HxW float32 anomaly map in model pixels, higher = more anomalous
    reconstruction: np.ndarray | None = None  # HxWxC in [0, 1], for kinds that reconstruct (shown in reports)


class Pipeline:
    """Preprocessed model input -> anomaly map. Subclasses name their kind and the output shape they need."""

    kind: ClassVar[str]

    def __init__(self, bundle: Bundle, threads: int = 1, use_float_model: bool = False) -> None:
        self.bundle = bundle
        paths = bundle.stage_paths(use_float_model)
        self.chain = StageChain(paths, threads=threads)
        check_model_shapes(bundle, self.chain.input_shape, self.chain.output_shape, self.output_shape(),
                           paths[0] if len(paths) == 1 else bundle.path, self.model_input_shape())

    def model_input_shape(self) -> tuple[int, ...]:
        """The first stage's input shape this kind needs: the bundle's input, unless the kind adapts it."""
        return self.bundle.input_shape

    def output_shape(self) -> tuple[int, ...]:
        """The last stage's output shape this kind needs, batch dimension included."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> PipelineOutput:
        """HxWxC float input in [0, 1] and the same image as pixels (for the raw uint8 fast path)."""
        raise NotImplementedError
