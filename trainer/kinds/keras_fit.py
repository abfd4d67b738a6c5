"""What the model kinds share: the progress bar, the optimizer schedule and the single-file export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorflow import keras
from tqdm import tqdm

from edge.core.bundle import FLOAT_MODEL_NAME, MODEL_NAME, Stage
from edge.core.files import write_bytes_atomic
from trainer.quantize import float_tflite, int8_tflite

LR_FLOOR = 0.05  # the cosine schedule ends at this share of the starting learning rate


class StepProgress(keras.callbacks.Callback):
    """One tqdm bar over all training steps, with the running loss."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.bar = tqdm(total=steps, desc="training", unit="step", mininterval=0.5)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and batch % 20 == 0:
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.5f}")

    def on_train_end(self, logs=None):
        self.bar.close()


def adam(options) -> keras.optimizers.Optimizer:
    """Adam with a cosine-decayed learning rate over the training steps."""
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(options.learning_rate, options.steps, alpha=LR_FLOOR))


def fit_steps(model: keras.Model, data, steps: int) -> None:
    """Counted in steps, not epochs, so small data sets still get enough updates."""
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,  # the dataset shuffles
              callbacks=[StepProgress(steps)])


def export_single_stage(model: keras.Model, x_train: np.ndarray, folder: Path, seed: int) -> list[Stage]:
    """The model as one int8 TFLite file (what ships) and its float twin; hashes are filled in on saving."""
    write_bytes_atomic(folder / FLOAT_MODEL_NAME, float_tflite(model))
    write_bytes_atomic(folder / MODEL_NAME, int8_tflite(model, x_train, seed=seed))
    return [Stage(MODEL_NAME, quantization="int8", float_file=FLOAT_MODEL_NAME)]
