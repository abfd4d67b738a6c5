"""Template for a kind's fit module (trainer/kinds/<kind>.py): the trainer's side, in three parts.

A fit module builds a Keras model (or several stages), fits it on good images, and exports TFLite files into the
staged bundle folder. The device runs them through the kind's pipeline (edge/kinds/<kind>/__init__.py), so:

1. Write the device side first (see edge/kinds/_template/__init__.py). The trainer calibrates and evaluates through that same
   code, by way of edge.core.inspector.Inspector.
2. Here: `fit(options, x_train)` returns what `export` needs; `export(model, x_train, folder, seed)` writes the
   model files and returns their Stage list in run order (hashes are filled in when the manifest is saved);
   `architecture(options, model)` is what model.json records about the model.
3. The pipeline's `choices` name the `--model` values, their default residual (None when the model outputs its
   map) and reducer, and the TrainOptions defaults; registering the pipeline registers them.

This file is not registered; it shows the shape with the smallest honest model: a per-pixel linear
autoencoder (one 1x1 convolution), run on the device by the "autoencoder" pipeline.
"""
from __future__ import annotations

import numpy as np
from tensorflow import keras

from trainer.kinds.keras_fit import adam, export_single_stage, fit_steps


def build(shape: tuple[int, int, int]) -> keras.Model:
    inputs = keras.Input(shape=shape)
    outputs = keras.layers.Conv2D(shape[-1], 1, activation="sigmoid")(inputs)
    return keras.Model(inputs, outputs, name="pixel_ae")


def fit(options, x_train: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(options.seed)
    model = build(x_train.shape[1:])
    model.compile(optimizer=adam(options), loss="mse")
    fit_steps(model, _batches(x_train, options.batch_size, options.seed), options.steps)
    return model


def _batches(x_train: np.ndarray, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        batch = x_train[rng.integers(len(x_train), size=batch_size)]
        yield batch, batch


export = export_single_stage  # one fused file; a backbone and a head would return two Stages


def architecture(options, model: keras.Model) -> dict:
    return {"kind": options.model, "parameters": int(model.count_params())}
