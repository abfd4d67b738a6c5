"""Autoencoders: the study's dense model and the SSIM-autoencoder layout of Bergmann et al. 2018.

On the device they run as the "autoencoder" pipeline: the anomaly map is the residual from the reconstruction.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf
from tensorflow import keras

from trainer import AUGMENTATIONS
from trainer.kinds.keras_fit import adam, export_single_stage, fit_steps

logger = logging.getLogger(__name__)

LOSSES = ("mse", "l1", "ssim")
LEAKY_SLOPE = 0.2  # Bergmann et al. use leaky ReLU with slope 0.2
OUTPUT_MEAN_CLIP = (1e-3, 1 - 1e-3)
SHIFT_MAX_FRACTION = 0.05  # of the image side: the "shift" augmentation's largest move
BRIGHTNESS_MAX_DELTA = 0.05


def output_bias(mean_intensity: float) -> keras.initializers.Initializer:
    """Start the sigmoid at the data's mean: avoids the all-black collapse seen on dark images."""
    p = float(np.clip(mean_intensity, *OUTPUT_MEAN_CLIP))
    return keras.initializers.Constant(math.log(p / (1 - p)))


def dense_autoencoder(shape: tuple[int, int, int], hidden: int = 392, latent: int = 64, mean_intensity: float = 0.5) -> keras.Model:
    """The study's model: 784 -> 392 -> 64 -> 392 -> 784, ReLU, sigmoid output (for 28x28x1)."""
    size = int(np.prod(shape))
    inputs = keras.Input(shape=shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    x = keras.layers.Dense(latent, activation="relu")(x)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    x = keras.layers.Dense(size, activation="sigmoid", bias_initializer=output_bias(mean_intensity))(x)
    outputs = keras.layers.Reshape(shape)(x)
    return keras.Model(inputs, outputs, name="dense_ae")


def _conv(x: tf.Tensor, filters: int, kernel: int, stride: int) -> tf.Tensor:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", kernel_initializer="he_normal")(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE)(x)


def _deconv(x: tf.Tensor, filters: int, kernel: int, stride: int) -> tf.Tensor:
    x = keras.layers.Conv2DTranspose(filters, kernel, strides=stride, padding="same", kernel_initializer="he_normal")(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE)(x)


def conv_downsamplings(height: int, width: int) -> int:
    """Stride-2 stages down to about 8x8, as in the 128x128 reference (4 stages)."""
    stages = 0
    while stages < 5 and min(height, width) // (2 ** (stages + 1)) >= 8 and height % 2 ** (stages + 1) == 0 and width % 2 ** (stages + 1) == 0:
        stages += 1
    return max(stages, 1)


def conv_autoencoder(
    shape: tuple[int, int, int], width: int = 32, latent: int = 100, mean_intensity: float = 0.5
) -> keras.Model:
    """Strided 4x4 convolutions down to a dense latent, mirrored with transposed convolutions."""
    height, width_px, channels = shape
    stages = conv_downsamplings(height, width_px)
    inputs = keras.Input(shape=shape)
    x = inputs
    filters = [min(width * 2 ** max(i - 1, 0), width * 4) for i in range(stages)]
    for i, f in enumerate(filters):
        x = _conv(x, f, 4, 2)
        if i > 0:
            x = _conv(x, f, 3, 1)
    bottom_h, bottom_w = height // 2**stages, width_px // 2**stages
    x = keras.layers.Conv2D(latent, (bottom_h, bottom_w), padding="valid", name="latent")(x)
    x = keras.layers.Conv2DTranspose(filters[-1], (bottom_h, bottom_w), padding="valid")(x)
    x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE)(x)
    for i, f in reversed(list(enumerate(filters))):
        if i > 0:
            x = _conv(x, f, 3, 1)
        x = _deconv(x, filters[i - 1] if i > 0 else width, 4, 2)
    outputs = keras.layers.Conv2D(
        channels, 3, padding="same", activation="sigmoid", bias_initializer=output_bias(mean_intensity)
    )(x)
    return keras.Model(inputs, outputs, name="conv_ae")


def loss_function(name: str):
    """Training loss by name: the study's MSE, L1, or SSIM (Bergmann et al. 2018, 11x11 window)."""
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "l1":
        return keras.losses.MeanAbsoluteError()
    if name == "ssim":
        def ssim_loss(y_true, y_pred):
            return 1.0 - tf.reduce_mean(tf.image.ssim(y_true, y_pred, max_val=1.0, filter_size=11))
        return ssim_loss
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def build_model(kind: str, shape: tuple[int, int, int], width: int, latent: int, mean_intensity: float) -> keras.Model:
    if kind == "dense":
        return dense_autoencoder(shape, hidden=width, latent=latent, mean_intensity=mean_intensity)
    return conv_autoencoder(shape, width=width, latent=latent, mean_intensity=mean_intensity)


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


def fit(options, x_train: np.ndarray) -> keras.Model:
    """Build and train the autoencoder the options name; returns the trained Keras model."""
    keras.utils.set_random_seed(options.seed)
    model = build_model(options.model, x_train.shape[1:], options.width, options.latent, float(x_train.mean()))
    model.compile(optimizer=adam(options), loss=loss_function(options.loss))
    data = dataset(x_train, options.batch_size, options.augment, options.seed)
    logger.info("%s: %d parameters, %d steps of %d images", model.name, model.count_params(), options.steps, options.batch_size)
    fit_steps(model, data, options.steps)
    return model


export = export_single_stage


def architecture(options, model: keras.Model) -> dict:
    return {"kind": options.model, "width": options.width, "latent": options.latent, "loss": options.loss,
            "parameters": int(model.count_params())}
