"""The trainer's model choices (`--model`): the kinds in edge.kinds declare them; each kind's fit module builds,
fits and exports its model.

The table imports no TensorFlow, so a command line can list the choices and their defaults cheaply;
`module_for` loads a choice's fit module when training starts.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from edge.kinds import MODELS, PIPELINES, ModelChoice


def fitting_module_name(choice: ModelChoice) -> str:
    """The dotted name of the module the trainer fits this choice with: the pipeline's `fit_module`, by default
    trainer/kinds/<kind folder>.py, named after the kind's device folder."""
    pipeline_class = PIPELINES[choice.kind]
    return pipeline_class.fit_module or f"trainer.kinds.{pipeline_class.__module__.rpartition('.')[2]}"


def module_for(choice: ModelChoice) -> ModuleType:
    """The choice's fit module (imports TensorFlow)."""
    return importlib.import_module(fitting_module_name(choice))


__all__ = ["MODELS", "ModelChoice", "module_for"]
