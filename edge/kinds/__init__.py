"""Model kinds: one module per kind, each turning the preprocessed model input into an anomaly map.

The bundle's `kind` picks the class here. To add a kind, start from _template.py.
"""
from __future__ import annotations

from edge.core.bundle import MANIFEST_NAME, Bundle, BundleError
from edge.kinds.autoencoder import AutoencoderPipeline
from edge.kinds.base import Pipeline, PipelineOutput
from edge.kinds.features import FeaturesPipeline
from edge.kinds.segmenter import SegmenterPipeline

PIPELINES: dict[str, type[Pipeline]] = {cls.kind: cls for cls in (AutoencoderPipeline, SegmenterPipeline,
                                                                  FeaturesPipeline)}


def open_pipeline(bundle: Bundle, threads: int = 1, use_float_model: bool = False) -> Pipeline:
    """The bundle's kind, with its stages loaded and checked."""
    try:
        pipeline_class = PIPELINES[bundle.kind]
    except KeyError:
        raise BundleError(f"{bundle.path / MANIFEST_NAME}: model kind {bundle.kind!r} is not known to this "
                          f"lineguard (it knows {', '.join(sorted(PIPELINES))})") from None
    return pipeline_class(bundle, threads=threads, use_float_model=use_float_model)


__all__ = ["PIPELINES", "Pipeline", "PipelineOutput", "open_pipeline"]
