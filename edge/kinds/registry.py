"""The table of model kinds: the device opens a bundle's kind here, the trainer finds its `--model` choices."""
from __future__ import annotations

from dataclasses import replace

from edge.core.bundle import MANIFEST_NAME, Bundle, BundleError
from edge.kinds.base import ModelChoice, Pipeline

PIPELINES: dict[str, type[Pipeline]] = {}
MODELS: dict[str, ModelChoice] = {}


def register(pipeline_class: type[Pipeline]) -> type[Pipeline]:
    """Make a kind known: bundles of its kind open with it, and its choices become `--model` values."""
    PIPELINES[pipeline_class.kind] = pipeline_class
    for choice in pipeline_class.choices:
        MODELS[choice.name] = replace(choice, kind=pipeline_class.kind)
    return pipeline_class


def unregister(pipeline_class: type[Pipeline]) -> None:
    PIPELINES.pop(pipeline_class.kind, None)
    for choice in pipeline_class.choices:
        MODELS.pop(choice.name, None)


def open_pipeline(bundle: Bundle, threads: int = 1, use_float_model: bool = False) -> Pipeline:
    """The bundle's kind, with its stages loaded and checked."""
    try:
        pipeline_class = PIPELINES[bundle.kind]
    except KeyError:
        raise BundleError(f"{bundle.path / MANIFEST_NAME}: model kind {bundle.kind!r} is not known to this "
                          f"lineguard (it knows {', '.join(sorted(PIPELINES))})") from None
    return pipeline_class(bundle, threads=threads, use_float_model=use_float_model)
