"""The trainer's model choices (`--model`), one module per kind: each builds, fits and exports its model.

This table imports no TensorFlow, so a command line can list the choices and their defaults cheaply;
`module_for` loads a choice's module when training starts. To add a choice, start from _template.py.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class ModelChoice:
    """One `--model` value: which trainer module makes it and which device pipeline kind runs it."""

    name: str
    module: str  # edge.kinds.<module>.fit: fit(options, x_train), export(model, x_train, folder, seed), architecture
    kind: str  # the bundle's kind, a pipeline in edge.kinds
    residual: str | None  # default residual map; None: the model outputs its map, so --residual does not apply
    reducer: str  # default image score from the map
    defaults: dict[str, Any] = field(default_factory=dict)  # TrainOptions fields left to the data


MODELS: dict[str, ModelChoice] = {choice.name: choice for choice in (
    ModelChoice("dense", "autoencoder", "autoencoder", "l1", "sum",
                {"width": 392, "latent": 64, "batch_size": 128, "steps": 3000, "learning_rate": 1e-3, "crop": 0}),
    ModelChoice("conv", "autoencoder", "autoencoder", "l1", "sum",
                {"width": 32, "latent": 100, "batch_size": 16, "steps": 3000, "learning_rate": 5e-4, "crop": 0}),
    ModelChoice("segmenter", "segmenter", "segmenter", None, "max",
                {"width": 8, "latent": 0, "batch_size": 8, "steps": 3000, "learning_rate": 2e-3, "crop": 0}),
    # Nothing to train by gradient descent: statistics of ImageNet features. PaDiM's smoothing, sigma 4 px.
    ModelChoice("features", "features", "features", None, "max",
                {"width": 0, "latent": 0, "batch_size": 0, "steps": 0, "learning_rate": 0.0, "crop": 0,
                 "smoothing_sigma": 4.0}),
)}


def module_for(choice: ModelChoice) -> ModuleType:
    """The choice's trainer module (imports TensorFlow)."""
    return importlib.import_module(f"edge.kinds.{choice.module}.fit")
