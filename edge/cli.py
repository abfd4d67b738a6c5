"""The `lineguard` command. Device commands need only the `edge` extra. Other commands (the trainer's train
and evaluate, which need the `train` extra) plug in through the `lineguard.commands` entry-point group, so the
device never imports the trainer."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

from edge.argtypes import POSITIVE_INT, number
from edge.exitcodes import EX_CANTCREAT, EX_CONFIG, EX_DATAERR, EX_IOERR, EX_OK
from edge.history_cli import add_history_command
from edge.web.client import add_station_commands

# Commands that other packages plug in, e.g. the trainer's train and evaluate. Each entry point names a
# function that takes argparse's subparsers, adds its command and sets `handler` (args -> exit code) on it.
COMMAND_ENTRY_POINTS = "lineguard.commands"
INTERRUPTED_EXIT = 130  # the shell's code for Ctrl-C

DESCRIPTION = """\
lineguard: visual inspection at the edge.

Train a model on images of good parts only (PaDiM, PatchCore or a nearest-neighbour head on an ImageNet
backbone's features, or the study's autoencoder, chosen by measurement), ship it as a calibrated int8 model bundle, and run the
inspection daemon on a Raspberry Pi that publishes a pass/fail verdict per frame over MQTT, serves a station
page and drives reject outputs over GPIO or Modbus.
"""

EPILOG = """\
examples:
  lineguard train --data mnist.npz --normal 1 --anomaly 9 --out models/mnist-1
  lineguard train --data datasets/bottle --out models/bottle        (MVTec AD folder layout)
  lineguard evaluate --model models/mnist-1 --data mnist.npz --out reports/mnist-1
  lineguard score --model models/mnist-1 part-0001.png part-0002.png
  lineguard check-config /etc/lineguard/config.yaml
  lineguard run --config /etc/lineguard/config.yaml
  lineguard threshold --config /etc/lineguard/config.yaml --reset
  lineguard feedback --config /etc/lineguard/config.yaml good --seq 1234
  lineguard history --config /etc/lineguard/config.yaml --since 2026-05-01T06:00:00+02:00 --summary
"""


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score image files; one JSON line per image",
                       description="Score images with a bundle's int8 model and print one JSON object per line: "
                                   "image, score, score_norm, threshold, verdict, regions. Needs no TensorFlow.")
    p.add_argument("--model", required=True, type=Path, help="bundle folder")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files (PNG, JPEG, BMP, TIFF ...); a folder stands for the images in it")
    p.add_argument("--threads", type=POSITIVE_INT, default=1, help="interpreter threads (default 1)")
    p.add_argument("--float", dest="use_float", action="store_true", help="use the float model instead of int8")
    p.set_defaults(handler=cmd_score)


def _add_device(sub) -> None:
    p = sub.add_parser("run", help="run the inspection daemon",
                       description="Capture frames, score them, publish verdicts over MQTT. Exits 78 on a bad "
                                   "config or bundle. SIGTERM stops cleanly; SIGHUP reloads config and model.")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default ./config.yaml)")
    p.add_argument("--max-frames", type=POSITIVE_INT, help="stop after this many frames (for trials)")
    p.add_argument("--drain-timeout", type=number(float, 0.0), metavar="S",
                   help="at the end of a finite replay, wait at most S seconds for delivery (default: storage.drain_timeout_s)")
    p.add_argument("--keep-serving", action="store_true",
                   help="after a finite replay, keep the station page up until Ctrl-C (web.keep_serving_after_replay)")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("check-config", help="validate a config file without starting anything (exit 0 or 78)",
                       description="Check a config as `run` would: keys, types and ranges (with line numbers), "
                                   "the model bundle (manifest and hashes), the source's files and the TLS and "
                                   "password files, every problem in one pass with its line. Starts no camera and "
                                   "no broker connection, unless --probe.")
    p.add_argument("--probe", action="store_true",
                   help="also open the source once and log in to the broker (publishing nothing)")
    p.add_argument("path", nargs="?", type=Path, default=Path("config.yaml"), help="config file (default ./config.yaml)")
    p.set_defaults(handler=cmd_check_config)
    p = sub.add_parser("config-schema", help="print the config's JSON Schema, for editors",
                       description="Print the JSON Schema of config.yaml, for editors with YAML schema support.")
    p.set_defaults(handler=cmd_config_schema)


def _add_plugged_in(sub, command: str | None) -> None:
    """Commands other installed packages declare in the entry-point group: only `command` when it is one
    of them, else all of them (for help and for the list of choices after a typo)."""
    declared = entry_points(group=COMMAND_ENTRY_POINTS)
    chosen = [entry_point for entry_point in declared if entry_point.name == command] or declared
    for entry_point in chosen:
        try:
            add_command = entry_point.load()
        except ImportError as exc:  # a broken plugin must not take the device commands down with it
            print(f"lineguard: command {entry_point.name} is unavailable: {exc}", file=sys.stderr)
            continue
        add_command(sub)


def _version() -> str:
    """lineguard's version, then the model runtime's and the interpreter's, e.g. for a bug report."""
    from edge.core.runtime import runtime_version  # imports NumPy: only when asked

    try:
        own = version("lineguard")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "unknown (not installed)"
    return (f"{own}\nruntime: {runtime_version()}\n"
            f"python: {platform.python_version()} ({platform.machine()}, {platform.system()})")


class _VersionAction(argparse.Action):
    """--version, worked out only when asked for: it looks up the runtime's version."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line for `command` (None: for all commands). A device command's parser imports no plug-in."""
    parser = argparse.ArgumentParser(prog="lineguard", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (for run: unless log_level says otherwise)")
    parser.add_argument("--version", action=_VersionAction, help="show the versions of lineguard, its runtime and Python, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_score(sub)
    _add_device(sub)
    add_station_commands(sub)
    add_history_command(sub)
    if command not in sub.choices:
        _add_plugged_in(sub, command)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command in argv: the first word that is not an option (no top-level option takes a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _image_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its image files, in name order."""
    from edge.core.preprocess import image_files

    expanded: list[Path] = []
    for path in paths:
        expanded += image_files(path) if path.is_dir() else [path]
    return expanded


def cmd_score(args) -> int:
    from edge.core.inspector import Inspector
    from edge.publish.messages import score_line

    inspector = Inspector(args.model, threads=args.threads, use_float_model=args.use_float)
    status = EX_OK
    for path in _image_paths(args.images):
        try:
            result = inspector.inspect_file(path)
        except ValueError as exc:
            print(f"lineguard score: {exc}", file=sys.stderr)
            status = EX_DATAERR
            continue
        print(score_line(str(path), result), flush=True)
    return status


def cmd_check_config(args) -> int:
    from edge.checkconfig import check_config

    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # the verdict is the output, not the model's load log
    code, lines = check_config(args.path, probe=args.probe)
    print("\n".join(lines), file=sys.stdout if code == EX_OK else sys.stderr)
    return code


def cmd_config_schema(args) -> int:
    from edge.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EX_OK


def cmd_run(args) -> int:
    from edge.daemon import run_from_config

    return run_from_config(args.config, max_frames=args.max_frames, drain_timeout_s=args.drain_timeout,
                           debug=args.verbose, keep_serving=args.keep_serving)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_word(argv)).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except BrokenPipeError:  # `lineguard score ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    except (ValueError, OSError) as exc:
        print(f"lineguard {args.command}: {exc}", file=sys.stderr)
        return _exit_code(exc)


def _exit_code(exc: Exception) -> int:
    """One line was printed; the code tells scripts and systemd which kind of problem it was."""
    from edge.core.bundle import BundleError, OutputDirError
    from edge.core.runtime import ModelLoadError

    if isinstance(exc, (BundleError, ModelLoadError)):
        return EX_CONFIG
    if isinstance(exc, OutputDirError):
        return EX_CANTCREAT
    if isinstance(exc, OSError):  # a disk that filled up or a folder that became unwritable while working
        return EX_IOERR
    return EX_DATAERR  # unreadable images, data errors: one line naming the file


if __name__ == "__main__":
    sys.exit(main())
