"""Template for a new model kind: copy this folder to edge/kinds/<kind>/, rename the class and its kind, and
register it with one line in edge/kinds/__init__.py (`register(YourPipeline)`).

A model kind turns the preprocessed model input into an anomaly map (HxW float32, higher = more anomalous).
Everything before (decoding, colour, ROI, resize, quality gate) and after (smoothing, ignore mask, image score,
verdict, regions) is shared and not the kind's business. A kind is two files:

1. __init__.py (this file), what the device runs: subclass Pipeline, set `kind`, give the output shape the last
   stage must return, and make the map in `__call__`. `self.chain` runs the bundle's TFLite stages in order
   (a fused file is preferred; a backbone and a head as two stages work too). Maths outside TFLite is
   vectorised numpy, never TensorFlow: the device has none. `choices` lists the trainer's `--model` values
   that make this kind, with their default scoring and TrainOptions.
2. trainer/kinds/<kind>.py, what the trainer fits (see trainer/kinds/_template.py): it builds, fits and exports
   the stages. Only the trainer imports it, by name; edge/ never imports the trainer.

This example is deliberately not registered. It reads a feature map from the last stage (1 x h x w x C) and
scores each position by its feature vector's length, upsampled to the model input: the shape of a
feature-distance head.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.kinds.base import Pipeline, PipelineOutput

FEATURE_CHANNELS = 16  # what the example's last stage returns per position


class FeatureNormPipeline(Pipeline):
    kind = "feature-norm-example"

    def output_shape(self) -> tuple[int, ...]:
        _, height, width, _ = self.bundle.input_shape
        return (1, height // 8, width // 8, FEATURE_CHANNELS)  # e.g. a stride-8 backbone layer

    def __call__(self, x: np.ndarray, pixels: np.ndarray) -> PipelineOutput:
        features = self.chain.run(x, pixels)
        distance = np.sqrt(np.square(features).sum(axis=-1, dtype=np.float32))
        _, height, width, _ = self.bundle.input_shape
        return PipelineOutput(cv2.resize(distance, (width, height), interpolation=cv2.INTER_LINEAR))
