"""Training loop: counted in steps, not epochs, so small data sets still get enough updates."""
from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tqdm import tqdm

from trainer.models import build_model, loss_function

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("flip", "shift", "brightness")
SHIFT_MAX_FRACTION = 0.05
BRIGHTNESS_MAX_DELTA = 0.05


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


def augment_fn(names: list[str], shape: tuple[int, int, int]):
    """Augmentations that suit parts: flips, small shifts, small brightness changes."""
    unknown = set(names) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; choose from {AUGMENTATIONS}")
    height, width, _ = shape
    pad_h, pad_w = max(1, int(height * SHIFT_MAX_FRACTION)), max(1, int(width * SHIFT_MAX_FRACTION))

    def apply(x):
        if "flip" in names:
            x = tf.image.random_flip_left_right(x)
            x = tf.image.random_flip_up_down(x)
        if "shift" in names:
            padded = tf.pad(x, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
            x = tf.image.random_crop(padded, shape)
        if "brightness" in names:
            x = tf.clip_by_value(tf.image.random_brightness(x, BRIGHTNESS_MAX_DELTA), 0.0, 1.0)
        return x

    return apply


def dataset(x: np.ndarray, batch_size: int, augment: list[str], seed: int) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    if augment:
        data = data.map(augment_fn(augment, x.shape[1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).map(lambda b: (b, b)).prefetch(tf.data.AUTOTUNE)


def fit_autoencoder(options, x_train: np.ndarray) -> keras.Model:
    """Build and train the model the options name; returns the trained Keras model."""
    keras.utils.set_random_seed(options.seed)
    model = build_model(options.model, x_train.shape[1:], options.width, options.latent, float(x_train.mean()))
    schedule = keras.optimizers.schedules.CosineDecay(options.learning_rate, options.steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss_function(options.loss))
    data = dataset(x_train, options.batch_size, options.augment, options.seed)
    logger.info("%s: %d parameters, %d steps of %d images", model.name, model.count_params(), options.steps, options.batch_size)
    model.fit(data, epochs=1, steps_per_epoch=options.steps, verbose=0, callbacks=[StepProgress(options.steps)])
    return model
