"""The synthetic-defect segmenter: a small U-Net taught to find defects pasted onto good images (DRAEM / NSA idea).

On the device it runs as the "segmenter" pipeline: the model outputs the anomaly map itself.
"""
from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
from tensorflow import keras

from trainer.kinds.keras_fit import adam, export_single_stage, fit_steps
from trainer.synthetic import DefectSynthesizer

logger = logging.getLogger(__name__)

FOCAL_WEIGHT = 10.0
DEFECT_SHARE = 0.7  # share of training images that get a synthetic defect; the rest teach "good"


def _conv_bn(x: tf.Tensor, filters: int) -> tf.Tensor:
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x)


def unet_segmenter(shape: tuple[int, int, int], width: int = 16, depth: int = 4) -> keras.Model:
    """A small U-Net that maps an image to a per-pixel defect probability (trained on synthetic defects)."""
    inputs = keras.Input(shape=shape)
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_bn(_conv_bn(x, width * 2**level), width * 2**level)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = _conv_bn(_conv_bn(x, width * 2**depth), width * 2**depth)
    for level in reversed(range(depth)):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = keras.layers.Concatenate()([x, skips[level]])
        x = _conv_bn(_conv_bn(x, width * 2**level), width * 2**level)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=keras.initializers.Constant(-4.0))(x)
    return keras.Model(inputs, outputs, name="unet_segmenter")


def segmentation_loss(y_true, y_pred):
    """Focal loss for the rare defect pixels plus soft Dice for whole regions."""
    focal = keras.losses.binary_focal_crossentropy(y_true, y_pred, gamma=2.0)
    overlap = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
    total = tf.reduce_sum(y_true, axis=[1, 2, 3]) + tf.reduce_sum(y_pred, axis=[1, 2, 3])
    dice = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
    return FOCAL_WEIGHT * tf.reduce_mean(focal) + tf.reduce_mean(dice)


def defect_batches(x_train: np.ndarray, batch_size: int, crop: int, augment: list[str], seed: int):
    """Endless (images, masks) batches of random crops of good images, most with a synthetic defect painted on."""
    rng = np.random.default_rng(seed)
    height, width, channels = x_train.shape[1:]
    crop_h, crop_w = min(crop, height), min(crop, width)
    synthesizer = DefectSynthesizer((crop_h, crop_w, channels), x_train[:, :crop_h, :crop_w], seed=seed)
    flip = "flip" in augment
    while True:
        images = np.empty((batch_size, crop_h, crop_w, channels), np.float32)
        masks = np.zeros((batch_size, crop_h, crop_w, 1), np.float32)
        for i in range(batch_size):
            top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
            image = x_train[rng.integers(len(x_train)), top:top + crop_h, left:left + crop_w]
            if flip and rng.uniform() < 0.5:
                image = image[:, ::-1]
            if rng.uniform() < DEFECT_SHARE:
                image, masks[i, ..., 0] = synthesizer(image)
            images[i] = image
        yield images, masks


def fit(options, x_train: np.ndarray) -> keras.Model:
    """Train the U-Net to find synthetic defects on good images."""
    keras.utils.set_random_seed(options.seed)
    shape = x_train.shape[1:]
    crop = min(options.crop or max(shape[:2]), *shape[:2])
    # Fully convolutional: trained on crops (cheaper steps), it then runs on the whole frame.
    model = unet_segmenter((None, None, shape[2]), width=options.width)
    model.compile(optimizer=adam(options), loss=segmentation_loss)
    signature = (tf.TensorSpec((options.batch_size, crop, crop, shape[2]), tf.float32),
                 tf.TensorSpec((options.batch_size, crop, crop, 1), tf.float32))
    data = tf.data.Dataset.from_generator(
        lambda: defect_batches(x_train, options.batch_size, crop, options.augment, options.seed),
        output_signature=signature,
    ).prefetch(4)
    logger.info("%s: %d parameters, %d steps of %d crops of %d px", model.name, model.count_params(), options.steps,
                options.batch_size, crop)
    fit_steps(model, data, options.steps)
    whole_frame = unet_segmenter(shape, width=options.width)  # fixed input shape for the TFLite export
    whole_frame.set_weights(model.get_weights())
    return whole_frame


export = export_single_stage


def architecture(options, model: keras.Model) -> dict:
    return {"kind": options.model, "width": options.width, "latent": options.latent,
            "loss": "focal+dice on synthetic defects", "parameters": int(model.count_params())}
