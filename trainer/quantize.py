"""Float and full-integer int8 TFLite conversion."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

REPRESENTATIVE_SAMPLES = 300


@contextlib.contextmanager
def _native_stderr_to_log():
    """The converter's C++ code prints settings and asset paths straight to fd 2: keep them for -v only,
    and show them in full when the conversion fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text:
                (logger.error if failed else logger.debug)("converter output:\n%s", text)


def _convert(converter: tf.lite.TFLiteConverter) -> bytes:
    """Convert, keeping the converter's printed SavedModel listing and settings off the terminal."""
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.WARNING)  # "Assets written to <temporary folder>" per conversion
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _native_stderr_to_log():
            warnings.simplefilter("ignore", UserWarning)
            return converter.convert()
    finally:
        tf_logger.setLevel(level)


def float_tflite(model: tf.keras.Model) -> bytes:
    return _convert(tf.lite.TFLiteConverter.from_keras_model(model))


def _representative(images: np.ndarray, seed: int):
    """Training images, plus one whose pixels span exactly 0..1 so the input scale is 1/255 with zero point 0,
    which lets the device feed uint8 pixels straight into the model."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=min(REPRESENTATIVE_SAMPLES, len(images)), replace=False)
    anchor = images[picks[0]].copy()
    anchor.reshape(-1)[0], anchor.reshape(-1)[-1] = 0.0, 1.0

    def generate():
        yield [anchor[None].astype(np.float32)]
        for i in picks:
            yield [images[i][None].astype(np.float32)]

    return generate


def int8_tflite(model: tf.keras.Model, images: np.ndarray, seed: int = 0, io_type: str = "uint8") -> bytes:
    """Full-integer post-training quantization with uint8 (or int8) input and output."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(images, seed)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8 if io_type == "uint8" else tf.int8
    converter.inference_output_type = tf.uint8 if io_type == "uint8" else tf.int8
    return _convert(converter)
