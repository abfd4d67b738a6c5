"""Training loop: counted in steps, not epochs, so small data sets still get enough updates."""
from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tqdm import tqdm

from trainer import AUGMENTATIONS
from trainer.models import build_model, loss_function

logger = logging.getLogger(__name__)

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
    model.fit(data, epochs=1, steps_per_epoch=options.steps, verbose=0, shuffle=False,  # the dataset shuffles
              callbacks=[StepProgress(options.steps)])
    return model


def segmentation_loss(y_true, y_pred):
    """Focal loss for the rare defect pixels plus soft Dice for whole regions."""
    focal = keras.losses.binary_focal_crossentropy(y_true, y_pred, gamma=2.0)
    overlap = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
    total = tf.reduce_sum(y_true, axis=[1, 2, 3]) + tf.reduce_sum(y_pred, axis=[1, 2, 3])
    dice = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
    return FOCAL_WEIGHT * tf.reduce_mean(focal) + tf.reduce_mean(dice)


FOCAL_WEIGHT = 10.0
DEFECT_SHARE = 0.7  # share of training images that get a synthetic defect; the rest teach "good"


def defect_batches(x_train: np.ndarray, batch_size: int, crop: int, augment: list[str], seed: int):
    """Endless (images, masks) batches of random crops of good images, most with a synthetic defect painted on."""
    from trainer.synthetic import DefectSynthesizer

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


def fit_segmenter(options, x_train: np.ndarray) -> keras.Model:
    """Train the U-Net to find synthetic defects on good images (DRAEM / NSA idea)."""
    from trainer.models import unet_segmenter

    keras.utils.set_random_seed(options.seed)
    shape = x_train.shape[1:]
    crop = min(options.crop or max(shape[:2]), *shape[:2])
    # Fully convolutional: trained on crops (cheaper steps), it then runs on the whole frame.
    model = unet_segmenter((None, None, shape[2]), width=options.width)
    schedule = keras.optimizers.schedules.CosineDecay(options.learning_rate, options.steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=segmentation_loss)
    signature = (tf.TensorSpec((options.batch_size, crop, crop, shape[2]), tf.float32),
                 tf.TensorSpec((options.batch_size, crop, crop, 1), tf.float32))
    data = tf.data.Dataset.from_generator(
        lambda: defect_batches(x_train, options.batch_size, crop, options.augment, options.seed),
        output_signature=signature,
    ).prefetch(4)
    logger.info("%s: %d parameters, %d steps of %d crops of %d px", model.name, model.count_params(), options.steps,
                options.batch_size, crop)
    model.fit(data, epochs=1, steps_per_epoch=options.steps, verbose=0, shuffle=False,  # the dataset shuffles
              callbacks=[StepProgress(options.steps)])
    whole_frame = unet_segmenter(shape, width=options.width)  # fixed input shape for the TFLite export
    whole_frame.set_weights(model.get_weights())
    return whole_frame
