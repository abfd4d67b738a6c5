"""The `lineguard` command. Device commands need only the `edge` extra; train and evaluate need `train`."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

EX_OK = 0
EX_DATAERR = 65  # sysexits.h: bad input data
EX_SOFTWARE = 70
EX_CANTCREAT = 73  # sysexits.h: cannot create an output
EX_IOERR = 74
EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus stops crash-loops on it

DESCRIPTION = """\
lineguard: visual inspection at the edge.

Train a model on images of good parts only (an autoencoder, or a U-Net that learns synthetic defects),
ship it as a calibrated int8 model bundle, and run the inspection daemon on a Raspberry Pi that
publishes a pass/fail verdict per frame over MQTT.
"""

EPILOG = """\
examples:
  lineguard train --data mnist.npz --normal 1 --anomaly 9 --out models/mnist-1
  lineguard train --data datasets/bottle --out models/bottle        (MVTec AD folder layout)
  lineguard evaluate --model models/mnist-1 --data mnist.npz --out reports/mnist-1
  lineguard score --model models/mnist-1 part-0001.png part-0002.png
  lineguard check-config /etc/lineguard/config.yaml
  lineguard run --config /etc/lineguard/config.yaml
"""


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 8:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH of at least 8 pixels, got {text!r}")
    return (values[0], values[-1])


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or values[2] == 0 or values[3] == 0:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H with W and H > 0, got {text!r}")
    return values  # type: ignore[return-value]


def _polygons(text: str) -> list:
    """A JSON list of polygons, each a list of [x, y] points, inline or in a .json file."""
    try:
        data = json.loads(Path(text).read_text() if text.endswith(".json") else text)
        polygons = [[(float(x), float(y)) for x, y in polygon] for polygon in data]
    except (OSError, ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"expected polygons like [[[0,0],[40,0],[40,30]]]: {exc}") from None
    if any(len(p) < 3 for p in polygons):
        raise argparse.ArgumentTypeError("each polygon needs at least 3 points")
    return polygons


def _classes(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers like 9 or 7,9, got {text!r}") from None


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """An argparse type for a number in a range, with an error that states the range."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    allowed = f"{left}{low:g}, {'inf' if high is None else f'{high:g}'}{right}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1)
FRACTION = _number(float, 0.0, 1.0, low_open=True, high_open=True)


def _augmentations(text: str) -> list[str]:
    from trainer import AUGMENTATIONS

    names = [a for a in text.split(",") if a]
    unknown = [a for a in names if a not in AUGMENTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return names


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="PATH",
                        help="an MVTec AD-layout folder (train/good, test/<kind>, ground_truth/), "
                             "a Keras-format .npz (x_train, y_train, x_test, y_test), or a folder of MNIST IDX files")
    parser.add_argument("--normal", type=int, default=1, help=".npz/IDX only: the class of good parts (default 1)")
    parser.add_argument("--anomaly", type=_classes, default=[9], help=".npz/IDX only: anomalous classes, e.g. 9 or 7,9 (default 9)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train, quantize and calibrate a model bundle from images of good parts",
                       description="Train a model on good images (see --model), quantize it to int8 TFLite, calibrate the "
                                   "threshold on the int8 model's own scores and write a bundle with its report. "
                                   "The bundle appears at --out only when everything succeeded.")
    _add_data_args(p)
    p.add_argument("--out", required=True, type=Path,
                   help="bundle folder to write, e.g. models/bottle; an earlier bundle there is replaced, "
                        "any other non-empty folder is refused")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not a lineguard bundle")
    p.add_argument("--name", help="bundle name (default: the --out folder name)")
    p.add_argument("--model", choices=("auto", "dense", "conv", "segmenter"), default="auto",
                   help="dense: the study's autoencoder; conv: the SSIM-autoencoder layout of Bergmann et al.; "
                        "segmenter: a U-Net trained on synthetic defects pasted onto the good images, whose output "
                        "is the anomaly map. auto: dense for gray images up to 32x32, else segmenter")
    p.add_argument("--size", type=_size, help="model input size, SIZE or HxW (default: native up to 32 px, else 128)")
    p.add_argument("--color", choices=("gray", "rgb"), help="colour mode (default: detected from the images)")
    p.add_argument("--roi", type=_roi, help="crop X,Y,W,H applied to every image before resizing")
    p.add_argument("--ignore-mask", type=Path, metavar="IMAGE",
                   help="mask image covering the whole frame; non-zero pixels are left out of scoring (shipped in the bundle)")
    p.add_argument("--ignore-polygons", type=_polygons, default=[], metavar="JSON",
                   help='polygons left out of scoring, in frame pixels: a JSON list like [[[0,0],[40,0],[40,30]]] or a .json file')
    p.add_argument("--loss", choices=("mse", "l1", "ssim"), default="mse",
                   help="autoencoders' training loss (default mse, the study's); the segmenter always learns its "
                        "synthetic defect masks with focal + dice loss")
    p.add_argument("--residual", choices=("l1", "l2", "ssim", "msgms"),
                   help="autoencoders' residual map (default l1, the study's); msgms: multi-scale gradient-magnitude similarity")
    p.add_argument("--reducer", choices=("sum", "mean", "max", "topk"),
                   help="image score from the map (default: sum, the study's, for autoencoders; max for the segmenter)")
    p.add_argument("--smoothing", type=_number(float, 0.0), default=0.0, metavar="SIGMA", help="Gaussian blur of the residual map, pixels (default 0)")
    p.add_argument("--topk", type=_number(float, 0.0, 1.0, low_open=True), default=0.01, metavar="FRACTION", help="share of pixels for --reducer topk (default 0.01)")
    p.add_argument("--width", type=POSITIVE_INT,
                   help="hidden units (dense, default 392), base filters (conv 32, segmenter 8)")
    p.add_argument("--latent", type=POSITIVE_INT, help="latent size (dense 64, conv 100; the segmenter has none)")
    p.add_argument("--crop", type=_number(int, 8), help="segmenter: train on random square crops of this size, then "
                                                        "run on the whole frame (default: whole frames)")
    p.add_argument("--steps", type=POSITIVE_INT, help="training steps (default 3000)")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="images per step (default 128 dense, 16 conv, 8 segmenter)")
    p.add_argument("--learning-rate", type=_number(float, 0.0, low_open=True),
                   help="Adam learning rate, cosine-decayed (default 1e-3 dense, 5e-4 conv, 2e-3 segmenter)")
    p.add_argument("--augment", type=_augmentations, default=[],
                   help="comma list of flip, shift, brightness (default none); the segmenter applies only flip")
    p.add_argument("--threshold", dest="threshold_method", choices=("auto", "best-f1", "good-quantile"), default="auto",
                   help="best-f1: the study's F1-optimal threshold on labelled test data; good-quantile: from held-out "
                        "good images for --target-frr; auto: best-f1 when --anomaly classes define the test set, else good-quantile")
    p.add_argument("--target-frr", type=FRACTION, default=0.01, help="false-reject rate for good-quantile (default 0.01)")
    p.add_argument("--val-fraction", type=_number(float, 0.0, 1.0, high_open=True), default=0.1, help="share of good training images held out for calibration (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same bundle")
    p.add_argument("--threads", type=POSITIVE_INT, default=2, help="interpreter threads for calibration (default 2)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a labelled test set with a bundle and write metrics and a report",
                       description="Score the test images with the bundle's int8 and float models, through the "
                                   "same code as the device, and write REPORT_DIR/metrics.json, plots and index.html.")
    p.add_argument("--model", required=True, type=Path, help="bundle folder")
    _add_data_args(p)
    p.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR",
                   help="report folder to write; an earlier report there is replaced, any other non-empty folder "
                        "is refused")
    p.add_argument("--force", action="store_true", help="replace REPORT_DIR even if it is not a lineguard report")
    p.add_argument("--threads", type=POSITIVE_INT, default=2, help="interpreter threads (default 2)")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score image files; one JSON line per image",
                       description="Score images with a bundle's int8 model and print one JSON object per line: "
                                   "image, score, score_norm, threshold, verdict, regions. Needs no TensorFlow.")
    p.add_argument("--model", required=True, type=Path, help="bundle folder")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files (PNG, JPEG, BMP, TIFF ...); a folder stands for the images in it")
    p.add_argument("--threads", type=POSITIVE_INT, default=1, help="interpreter threads (default 1)")
    p.add_argument("--float", dest="use_float", action="store_true", help="use the float model instead of int8")


def _add_device(sub) -> None:
    p = sub.add_parser("run", help="run the inspection daemon",
                       description="Capture frames, score them, publish verdicts over MQTT. Exits 78 on a bad "
                                   "config or bundle. SIGTERM stops cleanly; SIGHUP reloads config and model.")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default ./config.yaml)")
    p.add_argument("--max-frames", type=POSITIVE_INT, help="stop after this many frames (for trials)")
    p.add_argument("--drain-timeout", type=_number(float, 0.0), metavar="S",
                   help="at the end of a finite replay, wait at most S seconds for delivery (default: storage.drain_timeout_s)")
    p = sub.add_parser("check-config", help="validate a config file without starting anything (exit 0 or 78)",
                       description="Check a config as `run` would: keys, types and ranges (with line numbers), "
                                   "the model bundle (manifest and hashes), the source's files and the TLS and "
                                   "password files. Starts no camera and no broker connection.")
    p.add_argument("path", nargs="?", type=Path, default=Path("config.yaml"), help="config file (default ./config.yaml)")
    sub.add_parser("config-schema", help="print the config's JSON Schema, for editors",
                   description="Print the JSON Schema of config.yaml, for editors with YAML schema support.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lineguard")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (for run: unless log_level says otherwise)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_device(sub)
    return parser


def _image_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its image files, in name order."""
    from edge.core.preprocess import image_files

    expanded: list[Path] = []
    for path in paths:
        expanded += image_files(path) if path.is_dir() else [path]
    return expanded


def cmd_score(args) -> int:
    from edge.core.inspector import Inspector

    inspector = Inspector(args.model, threads=args.threads, use_float_model=args.use_float)
    status = EX_OK
    for path in _image_paths(args.images):
        try:
            result = inspector.inspect_file(path)
        except ValueError as exc:
            print(f"lineguard score: {exc}", file=sys.stderr)
            status = EX_DATAERR
            continue
        line = {"image": str(path), "score": result.score, "score_norm": round(result.score_norm, 6),
                "threshold": result.threshold, "verdict": result.verdict, "regions": result.regions}
        if result.reason:
            line["reason"] = result.reason
        print(json.dumps(line), flush=True)
    return status


def _load_data(args):
    from trainer.data import load_dataset, summarize

    dataset = load_dataset(args.data, normal=args.normal, anomaly=args.anomaly)
    logging.getLogger("lineguard").info("%s", summarize(dataset))
    return dataset


def cmd_train(args) -> int:
    from edge.core.bundle import check_output_dir
    from trainer.train import TrainOptions, train_bundle

    args.out = Path(os.path.abspath(args.out))  # "." and ".." have no name to publish under
    check_output_dir(args.out, "bundle", force=args.force, keep=(args.data,))  # before any training time is spent

    fields = TrainOptions.__dataclass_fields__
    options = TrainOptions(**{k: v for k, v in vars(args).items() if k in fields})
    options.smoothing_sigma, options.topk_fraction = args.smoothing, args.topk
    result = train_bundle(_load_data(args), args.out, options)
    print(json.dumps({k: result.get(k) for k in ("image_auroc", "f1", "precision", "recall", "threshold", "pixel_auroc")}))
    print(f"bundle written to {args.out}; report: {args.out / 'report' / 'index.html'}")
    return EX_OK


def cmd_evaluate(args) -> int:
    from edge.core.bundle import check_output_dir
    from trainer.evaluate import evaluate_bundle

    args.out = Path(os.path.abspath(args.out))
    check_output_dir(args.out, "report", force=args.force, keep=(args.model, args.data))

    result = evaluate_bundle(args.model, _load_data(args), args.out, threads=args.threads)
    print(json.dumps({k: result.get(k) for k in ("image_auroc", "f1", "precision", "recall", "threshold", "pixel_auroc")}))
    print(f"report written to {args.out / 'index.html'}")
    return EX_OK


def cmd_check_config(args) -> int:
    from edge.config.errors import ConfigError
    from edge.config.load import load_config
    from edge.daemon import preflight

    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # the verdict is the output, not the model's load log
    try:
        problems = [f"{args.path}: {problem}" for problem in preflight(load_config(args.path))]
    except ConfigError as exc:
        problems = exc.errors
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EX_CONFIG
    print(f"{args.path}: OK")
    return EX_OK


def cmd_config_schema(args) -> int:
    from edge.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EX_OK


def cmd_run(args) -> int:
    from edge.daemon import run_from_config

    return run_from_config(args.config, max_frames=args.max_frames, drain_timeout_s=args.drain_timeout,
                           debug=args.verbose)


COMMANDS = {
    "score": cmd_score, "train": cmd_train, "evaluate": cmd_evaluate, "run": cmd_run,
    "check-config": cmd_check_config, "config-schema": cmd_config_schema,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `lineguard score ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except KeyboardInterrupt:
        return 130
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
