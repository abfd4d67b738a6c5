"""The device never imports the trainer or TensorFlow, not even lazily; benchmarks reach the tests only
through tests/support. Read from the source with `ast`, so an import inside a function counts too.

A model kind's device side is its folder edge/kinds/<kind>/; what the trainer fits for it is
trainer/kinds/<kind>.py, which may import TensorFlow and which only the trainer loads, by name."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import ROOT

EDGE = ROOT / "edge"
BENCHMARKS = ROOT / "benchmarks"
NOT_ON_THE_DEVICE = ("trainer", "tensorflow", "keras")
SHARED_WITH_BENCHMARKS = "tests.support"
DYNAMIC_IMPORTERS = ("import_module", "__import__")
# A string that is exactly a module name can reach an importer through a variable, e.g. a fallback list.
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
DEVICE_COMMANDS = ("score", "run", "check-config", "config-schema")


def _called_name(function: ast.expr) -> str:
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def imported_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every absolute import anywhere in the tree, dynamic ones with a literal name too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from ((node.lineno, f"{node.module}.{alias.name}".removesuffix(".*")) for alias in node.names)
        elif isinstance(node, ast.Call) and _called_name(node.func) in DYNAMIC_IMPORTERS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def module_name_strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            yield node.lineno, node.value


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def device_violations(source: str, label: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename=label)
    found = [*imported_names(tree), *module_name_strings(tree)]
    return [f"{label}:{line}: {name}" for line, name in found
            if any(_within(name, package) for package in NOT_ON_THE_DEVICE)]


def benchmark_violations(source: str, label: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename=label)
    return [f"{label}:{line}: {name}" for line, name in imported_names(tree)
            if _within(name, "tests") and not _within(name, SHARED_WITH_BENCHMARKS)]


def _sources(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, f"no Python files under {folder}"
    return files


def test_the_device_never_imports_the_trainer_or_tensorflow():
    problems = [p for path in _sources(EDGE)
                for p in device_violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert problems == []


def test_every_registered_kind_has_its_fit_module_in_the_trainer():
    from edge.kinds import MODELS
    from trainer.models import fitting_module_name

    names = {fitting_module_name(choice) for choice in MODELS.values()}
    assert names == {"trainer.kinds.autoencoder", "trainer.kinds.segmenter", "trainer.kinds.features"}
    assert all((ROOT / (name.replace(".", "/") + ".py")).is_file() for name in names)


def test_benchmarks_import_from_the_tests_only_through_tests_support():
    problems = [p for path in _sources(BENCHMARKS)
                for p in benchmark_violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize("source", [
    "import tensorflow as tf",
    "import keras",
    "from trainer.train import TrainOptions",
    "from trainer import AUGMENTATIONS",
    "from tensorflow import lite",
    "def load():\n    import tensorflow.lite\n",
    "class Model:\n    def fit(self):\n        from trainer import fit\n",
    "import importlib\nimportlib.import_module('tensorflow.lite')",
    "from importlib import import_module\nimport_module('trainer.cli')",
    "__import__('keras')",
    "RUNTIMES = ('ai_edge_litert.interpreter', 'tensorflow.lite')",
])
def test_the_device_check_catches_every_form(source):
    assert device_violations(source)


@pytest.mark.parametrize("source", [
    "import edge.core.runtime",
    "from edge.core import bundle",
    "import importlib\nimportlib.import_module('ai_edge_litert.interpreter')",
    "HELP = 'train needs TensorFlow: install the trainer'",
    "import trainers_guide",
])
def test_the_device_check_lets_the_device_own_imports_through(source):
    assert device_violations(source) == []


@pytest.mark.parametrize("source, allowed", [
    ("from tests.support.broker import MosquittoBroker", True),
    ("from tests.support import helpers", True),
    ("def f():\n    from tests.support.helpers import make_mvtec\n", True),
    ("from tests.conftest import MosquittoBroker", False),
    ("def f():\n    from tests.helpers import make_mvtec\n", False),
    ("from tests import helpers", False),
    ("import tests.test_mqtt", False),
])
def test_the_benchmark_check_allows_only_tests_support(source, allowed):
    assert (benchmark_violations(source) == []) is allowed


MODULES_AFTER_DEVICE_PARSERS = f"""
import json, sys
import edge.cli, edge.daemon
for command in {DEVICE_COMMANDS!r}:
    edge.cli.build_parser(command).parse_args([command] if command != "score" else [command, "--model", "m", "x.png"])
print(json.dumps(sorted(sys.modules)))
"""

MODULES_AFTER_A_DEVICE_COMMAND = """
import contextlib, io, json, sys
from edge.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["config-schema"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


MODULES_AFTER_SCORING = """
import contextlib, io, json, sys
from edge.cli import main
codes = []
with contextlib.redirect_stdout(io.StringIO()):
    for bundle, image in BUNDLES_AND_IMAGES:
        codes.append(main(["score", "--model", bundle, image]))
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""


def _modules_of_a_real_process(script: str) -> object:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _off_device(modules: list[str]) -> list[str]:
    return [m for m in modules if any(_within(m, package) for package in NOT_ON_THE_DEVICE)]


def test_a_real_process_builds_the_device_parsers_without_trainer_or_tensorflow():
    assert _off_device(_modules_of_a_real_process(MODULES_AFTER_DEVICE_PARSERS)) == []


def test_a_real_process_runs_a_device_command_without_trainer_or_tensorflow():
    outcome = _modules_of_a_real_process(MODULES_AFTER_A_DEVICE_COMMAND)
    assert outcome["code"] == 0
    assert _off_device(outcome["modules"]) == []


def test_a_real_process_scores_every_kind_without_fit_modules_trainer_or_tensorflow():
    """`lineguard score` on a bundle of each committed kind: no fit module (trainer.kinds), no trainer, no
    TensorFlow loaded."""
    models = ROOT / "models"
    tile = next((ROOT / "tests" / "fixtures" / "magnetic-tile" / "test" / "good").iterdir())
    digit = next((ROOT / "samples" / "mnist").glob("*.png"))
    pairs = [(str(models / "mnist-1"), str(digit))] + [(str(models / name), str(tile)) for name in
                                                       ("magnetic-tile", "magnetic-tile-ae", "magnetic-tile-seg")]
    kinds = {json.loads((ROOT / bundle / "model.json").read_text())["kind"] for bundle, _ in pairs}
    assert kinds == {"autoencoder", "features", "segmenter"}
    outcome = _modules_of_a_real_process(f"BUNDLES_AND_IMAGES = {pairs!r}\n" + MODULES_AFTER_SCORING)
    assert outcome["codes"] == [0] * len(pairs)
    assert _off_device(outcome["modules"]) == []
    assert [m for m in outcome["modules"] if _within(m, "trainer.kinds")] == []
    assert "edge.kinds.features.heads.padim" in outcome["modules"]  # the check saw the kinds really load


MAX_MODULE_LINES = 400
MAX_DAEMON_LINES = 150


def test_modules_stay_small_enough_to_read():
    too_long = {str(path.relative_to(ROOT)): n for folder in ("edge", "trainer") for path in (ROOT / folder).rglob("*.py")
                if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}


def test_the_daemon_class_is_lifecycle_and_loop_only():
    tree = ast.parse((ROOT / "edge" / "daemon.py").read_text(encoding="utf-8"))
    [daemon] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Daemon"]
    assert daemon.end_lineno - daemon.lineno + 1 < MAX_DAEMON_LINES
