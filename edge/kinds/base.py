"""What every model kind shares: its stages loaded from the bundle and checked against the manifest, and the
trainer's `--model` choices it runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edge.core.bundle import Bundle, check_model_shapes
from edge.core.runtime import StageChain


@dataclass
class PipelineOutput:
    """A model kind's answer for one frame."""

    heat: np.ndarray  # HxW float32 anomaly map in model pixels, higher = more anomalous
    reconstruction: np.ndarray | None = None  # HxWxC in [0, 1], for kinds that reconstruct (shown in reports)


@dataclass(frozen=True)
class ModelChoice:
    """One `--model` value of the trainer: a kind's default scoring and TrainOptions. The registry fills in `kind`."""

    name: str
    residual: str | None  # default residual map; None: the model outputs its map, so --residual does not apply
    reducer: str  # default image score from the map
    defaults: dict[str, Any] = field(default_factory=dict)  # TrainOptions fields left to the data
    default_side: int = 128  # model input side (px) when --size is not given and the images are not small
    small_upscale: int = 1  # small images reach the model enlarged this many times
    large_side: int | None = None  # model input side for large frames (every side >= LARGE_FRAME_SIDE), if larger
    kind: str = ""


LARGE_FRAME_SIDE = 512  # frames at least this large on every side keep small defects only at a larger input


class Pipeline:
    """Preprocessed model input -> anomaly map. Subclasses name their kind and the output shape they need.

    `choices` are the trainer's `--model` values this kind runs. The trainer's side of the kind is the module
    `fit_module` names, by default trainer/kinds/<kind folder>.py (trainer.models.fitting_module_name): it has
    `fit(options, x_train)`, `export(model, x_train, folder, seed)` and `architecture(options, model)`, may import
    TensorFlow, and the device never imports it.
    """

    kind: ClassVar[str]
    choices: ClassVar[tuple[ModelChoice, ...]] = ()
    fit_module: ClassVar[str | None] = None

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
