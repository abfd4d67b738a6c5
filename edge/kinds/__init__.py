"""Model kinds, one folder each: edge/kinds/<kind>/__init__.py is what the device runs (preprocessed model input
-> anomaly map); trainer/kinds/<kind>.py is what the trainer fits and exports. The bundle's `kind` picks the
pipeline; the trainer's `--model` picks a choice of a kind.

To add a kind: copy edge/kinds/_template/ to edge/kinds/<kind>/ and trainer/kinds/_template.py to
trainer/kinds/<kind>.py, and add one `register` line below.
"""
from __future__ import annotations

from edge.kinds.autoencoder import AutoencoderPipeline
from edge.kinds.base import ModelChoice, Pipeline, PipelineOutput
from edge.kinds.features import FeaturesPipeline
from edge.kinds.registry import MODELS, PIPELINES, open_pipeline, register, unregister
from edge.kinds.segmenter import SegmenterPipeline

register(AutoencoderPipeline)
register(SegmenterPipeline)
register(FeaturesPipeline)

__all__ = ["MODELS", "PIPELINES", "ModelChoice", "Pipeline", "PipelineOutput", "open_pipeline",
           "register", "unregister"]
