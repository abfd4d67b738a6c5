"""The trainer's model choices (`--model`): the kinds in edge.kinds declare them; each kind's fit module builds,
fits and exports its model.

The table imports no TensorFlow, so a command line can list the choices and their defaults cheaply;
`module_for` loads a choice's fit module when training starts.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from edge.kinds import MODELS, ModelChoice, fitting_module_name


def module_for(choice: ModelChoice) -> ModuleType:
    """The choice's fit module (imports TensorFlow)."""
    return importlib.import_module(fitting_module_name(choice))


__all__ = ["MODELS", "ModelChoice", "module_for"]
