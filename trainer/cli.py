"""`lineguard train` and `lineguard evaluate`, plugged into the `lineguard` command through the
`lineguard.commands` entry-point group.

Nothing here imports TensorFlow at import time: `lineguard --help` stays fast and lists these commands
even where the train extra is missing, and running one there says what to install.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from edge.argtypes import FRACTION, POSITIVE_INT, number, polygons, roi, size
from edge.exitcodes import EX_CONFIG, EX_OK
from edge.core.scoring import REDUCERS, RESIDUALS
from trainer import AUGMENTATIONS
from edge.kinds.features.heads import HEADS
from trainer.models import MODELS

TRAIN_EXTRA_HINT = "pip install 'lineguard[train]'"
# Top-level modules that only the train extra installs; missing one means the extra is missing.
TRAIN_EXTRA_MODULES = frozenset({"tensorflow", "keras", "sklearn", "scipy", "matplotlib", "tqdm"})
SUMMARY_KEYS = ("defect_catch_rate", "false_reject_rate", "threshold", "image_auroc", "pixel_auroc")
MIN_CATCH_DEFAULT = 0.9  # trainer.fitness.MIN_CATCH, restated so that --help needs no scientific stack


def _classes(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers like 9 or 7,9, got {text!r}") from None


def _augmentations(text: str) -> list[str]:
    names = [a for a in text.split(",") if a]
    unknown = [a for a in names if a not in AUGMENTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return names


def needs_train_extra(command):
    """Turn a missing train extra into one line that says what to install, instead of a traceback."""

    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in TRAIN_EXTRA_MODULES:
                raise  # a bug, not a missing extra
            print(f"lineguard {args.command}: needs the train extra ({missing} is missing): {TRAIN_EXTRA_HINT}",
                  file=sys.stderr)
            return EX_CONFIG

    return run


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="PATH",
                        help="an MVTec AD-layout folder (train/good, test/<kind>, ground_truth/), "
                             "a Keras-format .npz (x_train, y_train, x_test, y_test), or a folder of MNIST IDX files")
    parser.add_argument("--normal", type=int, default=1, help=".npz/IDX only: the class of good parts (default 1)")
    parser.add_argument("--anomaly", type=_classes, default=[9], help=".npz/IDX only: anomalous classes, e.g. 9 or 7,9 (default 9)")


def add_train(sub) -> argparse.ArgumentParser:
    """The `train` command. Options whose dest is a TrainOptions field become that field."""
    p = sub.add_parser("train", help="train, quantize and calibrate a model bundle from images of good parts",
                       description="Train a model on good images (see --model), quantize it to int8 TFLite, calibrate the "
                                   "threshold on the int8 model's own scores and write a bundle with its report. "
                                   "The bundle appears at --out only when everything succeeded.")
    _add_data_args(p)
    p.add_argument("--extra-good", action="append", type=Path, default=[], metavar="DIR",
                   help="an MVTec-layout folder, such as the station's feedback folder, whose train/good images "
                        "join the training images of --data; repeatable")
    p.add_argument("--out", required=True, type=Path,
                   help="bundle folder to write, e.g. models/bottle; an earlier bundle there is replaced, "
                        "any other non-empty folder is refused")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not a lineguard bundle")
    p.add_argument("--name", help="bundle name (default: the --out folder name)")
    p.add_argument("--model", choices=("auto", *MODELS), default="auto",
                   help="dense: the study's autoencoder; conv: the SSIM-autoencoder layout of Bergmann et al.; "
                        "segmenter: a U-Net trained on synthetic defects pasted onto the good images, whose output "
                        "is the anomaly map; features: an ImageNet MobileNetV2 backbone with a PaDiM head fitted on the "
                        "good images. auto: features for ordinary images; for images up to 32 px the dense "
                        "autoencoder or features, whichever best finds synthetic defects on held-out good images")
    p.add_argument("--size", type=size, help="model input size, SIZE or HxW; every image is resized to it "
                                             "(default: native up to 32 px, 224 for features, else 128)")
    p.add_argument("--color", choices=("gray", "rgb"), help="colour mode (default: detected from the images)")
    p.add_argument("--roi", type=roi, help="crop X,Y,W,H applied to every image before resizing")
    p.add_argument("--ignore-mask", type=Path, metavar="IMAGE",
                   help="mask image covering the whole frame; non-zero pixels are left out of scoring (shipped in the bundle)")
    p.add_argument("--ignore-polygons", type=polygons, default=[], metavar="JSON",
                   help='polygons left out of scoring, in frame pixels: a JSON list like [[[0,0],[40,0],[40,30]]] or a .json file')
    p.add_argument("--edge-band", type=number(int, 0), default=0, metavar="PX",
                   help="leave the outer PX pixels of the model input out of the map and the score (the bundle's "
                        "scoring.edge_band): for parts that never reach the frame's edge, where specks on the "
                        "background meet the backbone's padding and set the threshold (the log and report say when "
                        "that happens, and which PX)")
    p.add_argument("--loss", choices=("mse", "l1", "ssim"), default="mse",
                   help="autoencoders' training loss (default mse, the study's); the segmenter always learns its "
                        "synthetic defect masks with focal + dice loss")
    p.add_argument("--residual", choices=RESIDUALS,
                   help="autoencoders' residual map (default l1, the study's); msgms: multi-scale gradient-magnitude similarity")
    p.add_argument("--reducer", choices=REDUCERS,
                   help="image score from the map (default: sum, the study's, for autoencoders; max for the segmenter)")
    p.add_argument("--smoothing", dest="smoothing_sigma", type=number(float, 0.0), default=None, metavar="SIGMA",
                   help="Gaussian blur of the anomaly map, pixels (default 4 for features, else 0)")
    p.add_argument("--topk", dest="topk_fraction", type=number(float, 0.0, 1.0, low_open=True), default=0.01,
                   metavar="FRACTION", help="share of pixels for --reducer topk (default 0.01)")
    p.add_argument("--width", type=POSITIVE_INT,
                   help="hidden units (dense, default 392), base filters (conv 32, segmenter 8)")
    p.add_argument("--latent", type=POSITIVE_INT, help="latent size (dense 64, conv 100; the segmenter has none)")
    p.add_argument("--head", choices=("auto", *HEADS), default="auto",
                   help="features: padim (a Gaussian per patch position; parts always in the same place) or patchcore "
                        "(nearest good patch, position-free) or knn (small images: the pooled image vector, mean "
                        "distance to the 2 nearest good images); auto: the one that best finds synthetic defects on "
                        "held-out good images (default)")
    p.add_argument("--crop", type=number(int, 8), help="segmenter: train on random square crops of this size, then "
                                                       "run on the whole frame (default: whole frames)")
    p.add_argument("--steps", type=POSITIVE_INT, help="training steps (default 3000)")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="images per step (default 128 dense, 16 conv, 8 segmenter)")
    p.add_argument("--learning-rate", type=number(float, 0.0, low_open=True),
                   help="Adam learning rate, cosine-decayed (default 1e-3 dense, 5e-4 conv, 2e-3 segmenter)")
    p.add_argument("--augment", type=_augmentations, default=[],
                   help="comma list of flip, shift, brightness (default none); the segmenter applies only flip")
    p.add_argument("--threshold", dest="threshold_method", choices=("auto", "best-f1", "good-quantile"), default="auto",
                   help="best-f1: the study's F1-optimal threshold on labelled test data; good-quantile: for "
                        "--target-frr from good images only: every training good image scored by a model fitted "
                        "without it (features kind, 10-fold cross-fitting), else a held-out share "
                        "(--val-fraction); auto: best-f1 when --anomaly classes define the test set, else good-quantile")
    p.add_argument("--target-frr", type=FRACTION, default=0.01, help="false-reject rate for good-quantile (default 0.01)")
    p.add_argument("--val-fraction", type=number(float, 0.0, 1.0, high_open=True), default=0.1, help="share of good training images held out for calibration by kinds that cannot refit per fold "
                        "(the autoencoders and the segmenter; default 0.1); the features kind holds none out")
    _add_min_catch(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same bundle")
    p.add_argument("--threads", type=POSITIVE_INT, default=2, help="interpreter threads for calibration (default 2)")
    p.set_defaults(handler=cmd_train)
    return p


def add_evaluate(sub) -> argparse.ArgumentParser:
    """The `evaluate` command."""
    p = sub.add_parser("evaluate", help="score a labelled test set with a bundle and write metrics and a report",
                       description="Score the test images with the bundle's int8 and float models, through the "
                                   "same code as the device, and write REPORT_DIR/metrics.json, plots and index.html.")
    p.add_argument("--model", required=True, type=Path, help="bundle folder")
    _add_data_args(p)
    p.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR",
                   help="report folder to write; an earlier report there is replaced, any other non-empty folder "
                        "is refused")
    p.add_argument("--force", action="store_true", help="replace REPORT_DIR even if it is not a lineguard report")
    _add_min_catch(p)
    p.add_argument("--threads", type=POSITIVE_INT, default=2, help="interpreter threads (default 2)")
    p.set_defaults(handler=cmd_evaluate)
    return p


def options_from_args(options_type: type, args: argparse.Namespace):
    """A dataclass of options from parsed arguments: every field that has an option of the same dest."""
    given = vars(args)
    return options_type(**{f.name: given[f.name] for f in fields(options_type) if f.name in given})


def _load_data(args, extra_good: list[Path] = ()):
    from trainer.data import add_extra_good, load_dataset, summarize

    dataset = add_extra_good(load_dataset(args.data, normal=args.normal, anomaly=args.anomaly), extra_good)
    logging.getLogger("lineguard").info("%s", summarize(dataset))
    return dataset


def _add_min_catch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-catch", type=FRACTION, default=MIN_CATCH_DEFAULT, metavar="FRACTION",
                        help="share of test defects a model must catch at its threshold to be called fit "
                             f"(default {MIN_CATCH_DEFAULT})")


def _print_summary(result: dict) -> None:
    """The verdict in words, then one JSON line for scripts."""
    from trainer.fitness import summary_lines

    summary = result.get("fitness")
    if summary:
        print("\n".join(summary_lines(summary)))
    edge = (result.get("calibration") or {}).get("edge_peaks")
    if edge:
        print(f"note: {edge['note']}")
    figures = {k: result.get(k) for k in SUMMARY_KEYS}
    print(json.dumps({"verdict": (summary or {}).get("verdict"), **figures}, allow_nan=False))


@needs_train_extra
def cmd_train(args) -> int:
    from edge.core.bundle import check_output_dir
    from trainer.train import TrainOptions, train_bundle

    args.out = Path(os.path.abspath(args.out))  # "." and ".." have no name to publish under
    # before any training time is spent
    check_output_dir(args.out, "bundle", force=args.force, keep=(args.data, *args.extra_good))

    result = train_bundle(_load_data(args, args.extra_good), args.out, options_from_args(TrainOptions, args))
    _print_summary(result)
    print(f"bundle written to {args.out}; report: {args.out / 'report' / 'index.html'}")
    return EX_OK


@needs_train_extra
def cmd_evaluate(args) -> int:
    from edge.core.bundle import check_output_dir
    from trainer.evaluate import evaluate_bundle

    args.out = Path(os.path.abspath(args.out))
    check_output_dir(args.out, "report", force=args.force, keep=(args.data,), sealed=(args.model,))

    result = evaluate_bundle(args.model, _load_data(args), args.out, threads=args.threads, min_catch=args.min_catch)
    _print_summary(result)
    print(f"report written to {args.out / 'index.html'}")
    return EX_OK
