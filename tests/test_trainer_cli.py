"""train and evaluate plug into `lineguard` through the entry-point group: listed in the help, every train option
reaches TrainOptions, and a missing train extra is one line naming what to install."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from edge.cli import build_parser
from tests.support.helpers import MNIST_SMALL, ROOT, run_cli
from trainer.train import TrainOptions

EX_CONFIG = 78
TRAIN_ONLY_OPTIONS = {"verbose", "command", "handler", "data", "normal", "anomaly", "out", "force",
                      "extra_good"}  # not model options

WITHOUT_THE_TRAIN_EXTRA = """
import sys
from edge.cli import main
from trainer.cli import TRAIN_EXTRA_MODULES


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TRAIN_EXTRA_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
sys.exit(main(sys.argv[1:]))
"""


def test_help_lists_the_plugged_in_commands():
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("positional arguments:")[1].split("options:")[0]
    for command in ("train", "evaluate", "score", "run", "check-config", "config-schema"):
        assert f"    {command} " in listed or f"    {command}\n" in listed, listed


def test_every_train_option_reaches_train_options():
    args = build_parser("train").parse_args(["train", "--data", "d", "--out", "o"])
    assert set(vars(args)) - TRAIN_ONLY_OPTIONS <= {f.name for f in fields(TrainOptions)}


def test_train_options_take_the_parsed_values():
    from trainer.cli import options_from_args

    args = build_parser("train").parse_args([
        "train", "--data", "d", "--out", "o", "--smoothing", "1.5", "--topk", "0.2", "--threshold", "good-quantile",
        "--batch-size", "4", "--size", "24x16", "--augment", "flip,shift", "--name", "part-7",
    ])
    options = options_from_args(TrainOptions, args)
    assert (options.smoothing_sigma, options.topk_fraction, options.threshold_method) == (1.5, 0.2, "good-quantile")
    assert (options.batch_size, options.size, options.name) == (4, (24, 16), "part-7")
    assert options.augment == ["flip", "shift"]


def test_without_the_train_extra_train_says_what_to_install(tmp_path):
    for command in (["train"], ["evaluate", "--model", "models/mnist-1"]):
        result = subprocess.run(
            [sys.executable, "-c", WITHOUT_THE_TRAIN_EXTRA, *command, "--data", str(MNIST_SMALL),
             "--out", str(tmp_path / "out")],
            capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == EX_CONFIG, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'lineguard[train]'" in lines[0], result.stderr[-2000:]
        assert not (tmp_path / "out").exists()
