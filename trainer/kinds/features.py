"""The trainer's side of the `features` kind: an ImageNet MobileNetV2 (models/backbones/) and a head fitted on its
patch features.

Nothing is trained by gradient descent: the head's statistics come from the good images' features, extracted by
the int8 backbone through the device's own code (edge.kinds.components.backbone.BackboneFeatures), so the device
scores exactly the features the head was fitted on. The heads (edge.kinds.features.heads) are fitted and checked
through their one registry.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.core.bundle import Stage, sha256_of
from edge.core.files import write_bytes_atomic
from edge.core.runtime import TFLiteStage
from edge.core.scoring import edge_band_mask
from edge.kinds.components.backbone import BackboneFeatures
from trainer.kinds.head_choice import choose_head, choose_head_at_threshold, device_score_of, progress
from edge.kinds.features.heads import HEAD_FILE, HeadFit, fit_head
from trainer import backbones
from trainer.synthetic import DefectSynthesizer

logger = logging.getLogger(__name__)

BACKBONE_NAME = "backbone.tflite"
BACKBONE_FLOAT_NAME = "backbone_float.tflite"
HOLDOUT_FRACTION = 0.15  # of the training images, held out to choose the head when none is given
MIN_HOLDOUT = 8
MIN_CROSS_CHOICE = 40  # good images from which heads are chosen at the threshold they would ship (cross-fitted)
SMALL_GRID_POSITIONS = 64  # a patch grid up to 8x8 (inputs up to 64 px): the global knn head is a candidate too


@dataclass
class FittedFeatures:
    """What `fit` hands to `export` and `architecture`."""

    backbone_int8: bytes
    backbone_float: bytes
    head_type: str
    arrays: dict[str, np.ndarray]
    input_scale: float
    input_zero: float
    layer_channels: list[int]
    details: dict = field(default_factory=dict)
    head_sha256: str = ""
    features: np.ndarray | None = field(default=None, repr=False)  # the training goods', kept for refit
    setting: HeadFit | None = field(default=None, repr=False)


def sized_backbone(size: tuple[int, int]) -> tuple[bytes, bytes]:
    """The int8 backbone for a (height, width) input, and its float twin."""
    height, width = size
    cut = backbones.backbone_path().read_bytes()
    sized = backbones.with_input_size(cut, height, width)
    return sized, backbones.float_twin(sized)


def open_extractor(model_bytes: bytes, folder: Path, threads: int) -> BackboneFeatures:
    """The device's feature extractor on a backbone file written to `folder`."""
    path = folder / BACKBONE_NAME
    path.write_bytes(model_bytes)
    stage = TFLiteStage(path, threads=threads)
    scale, zero = stage.input_scale, stage.input_zero
    return BackboneFeatures(stage, scale, zero)


def extract(extractor: BackboneFeatures, x: np.ndarray, desc: str = "features"):
    """Yield (positions, channels) float32 features for every image, with a progress bar."""
    for image in tqdm(x, desc=desc, unit="img", leave=False, mininterval=0.5):
        pixels = np.rint(image * 255.0).astype(np.uint8)  # the uint8 frame the device sees (x is pixels / 255)
        yield extractor(image, pixels)


def _synthetic_defects(images: np.ndarray, donors: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the images with a synthetic defect each, and the defects' masks."""
    synthesizer = DefectSynthesizer(images.shape[1:], donors, seed=seed)
    made = [synthesizer(image) for image in images]
    return np.stack([image for image, _ in made]), np.stack([mask for _, mask in made])


def visible_defects(masks: np.ndarray, band_px: int) -> np.ndarray | None:
    """Which synthetic defects reach inside an edge band of band_px (the others cannot be seen); None: all."""
    band = edge_band_mask(masks.shape[1:3], band_px)
    return None if band is None else masks[:, ~band].max(axis=1) > 0


def head_candidates(positions: int) -> tuple[str, ...]:
    """Heads measured when none is given; the first wins a tie (the cheapest to run)."""
    return ("knn", "padim", "patchcore") if positions <= SMALL_GRID_POSITIONS else ("padim", "patchcore")


def held_out_defects(x_train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(kept, held-out) indices and the held-out images with synthetic defects; None with too few images."""
    order = np.random.default_rng(seed).permutation(len(x_train))
    n_hold = max(MIN_HOLDOUT, int(round(len(x_train) * HOLDOUT_FRACTION)))
    if len(x_train) - n_hold < MIN_HOLDOUT:
        return None
    held, kept = order[:n_hold], order[n_hold:]
    return kept, held, _synthetic_defects(x_train[held], x_train[kept], seed)[0]


def head_setting(extractor: BackboneFeatures, budget: int, seed: int) -> HeadFit:
    """What fitting a head on this extractor's features may use."""
    return HeadFit(budget_bytes=budget, seed=seed, layer_channels=tuple(extractor.layer_channels),
                   grid=extractor.grid, progress=progress)


def _pick_head(options, x_train: np.ndarray, features: np.ndarray, extractor, setting: HeadFit) -> tuple[str, dict]:
    """--head, or with none given the head that best finds synthetic defects on held-out good images."""
    if options.head != "auto":
        return options.head, {"reason": f"{options.head}: chosen with --head"}
    candidates = head_candidates(features.shape[1])
    # Scored as the station will score the shipped bundle.
    score_of = device_score_of(extractor.grid, tuple(options.size), options.scoring_spec())
    if len(x_train) >= MIN_CROSS_CHOICE:
        defects, masks = _synthetic_defects(x_train, x_train, options.seed)
        defect_features = np.stack(list(extract(extractor, defects, "synthetic defects")))
        return choose_head_at_threshold(features, defect_features, setting, candidates, options.target_frr,
                                        score_of, visible_defects(masks, options.edge_band))
    split = held_out_defects(x_train, options.seed)
    if split is None:
        return candidates[0], {"reason": f"{candidates[0]}: too few images ({len(x_train)}) to hold some out and "
                                         "measure"}
    kept, held, defective = split
    defect_features = np.stack(list(extract(extractor, defective, "synthetic defects")))
    return choose_head(features[kept], features[held], defect_features, setting, candidates, score_of)


def fit(options, x_train: np.ndarray) -> FittedFeatures:
    int8_bytes, float_bytes = sized_backbone(options.size)
    with tempfile.TemporaryDirectory(prefix="lineguard-backbone-") as folder:
        extractor = open_extractor(int8_bytes, Path(folder), options.threads)
        positions = extractor.grid[0] * extractor.grid[1]
        layer_channels = [int(c) for c in extractor.layer_channels]
        logger.info("backbone: ImageNet MobileNetV2 cut at stride 8 and 16, %d patches of %d channels per image",
                    positions, extractor.channels)
        features = np.stack(list(extract(extractor, x_train)))
        setting = head_setting(extractor, len(int8_bytes) + len(float_bytes), options.seed)
        head_type, choice = _pick_head(options, x_train, features, extractor, setting)
        scale, zero = extractor.input_scale, extractor.input_zero
    logger.info("head: %s", choice["reason"])
    arrays, details, _ = fit_head(head_type, features, setting)
    logger.info("%s head fitted: %s", head_type, details)
    return FittedFeatures(int8_bytes, float_bytes, head_type, arrays, float(scale), float(zero), layer_channels,
                          {**details, "choice": choice}, features=features, setting=setting)


PATCHCORE_FOLDS = 5  # a PatchCore refit builds a new coreset (seconds to tens of seconds); the others take about one


def refit_folds(model: FittedFeatures) -> int:
    """Folds for cross-fitting this head (trainer.calibration.FOLDS unless the head is slow to refit)."""
    return PATCHCORE_FOLDS if model.head_type == "patchcore" else 10


def refit(model: FittedFeatures, keep: np.ndarray) -> FittedFeatures:
    """The same head refitted on the kept training images only (cross-fitting: trainer.crossfit). PatchCore is
    refitted too, not just left without the fold's bank entries: a new coreset covers the places those entries
    covered, as a model that never saw the images would (dropping entries alone raised the screw threshold)."""
    arrays, details, _ = fit_head(model.head_type, model.features[keep], model.setting)
    return replace(model, arrays=arrays, details={**details, "choice": model.details.get("choice")}, head_sha256="",
                   features=None)


def export(model: FittedFeatures, x_train: np.ndarray, folder: Path, seed: int) -> list[Stage]:
    """The sized int8 backbone, its float twin and the head file; the head's hash goes into the architecture."""
    write_bytes_atomic(folder / BACKBONE_NAME, model.backbone_int8)
    write_bytes_atomic(folder / BACKBONE_FLOAT_NAME, model.backbone_float)
    with open(folder / HEAD_FILE, "wb") as handle:
        np.savez(handle, **{name: array for name, array in model.arrays.items() if not name.startswith("_")})
    model.head_sha256 = sha256_of(folder / HEAD_FILE)
    return [Stage(BACKBONE_NAME, quantization="int8", float_file=BACKBONE_FLOAT_NAME)]


def architecture(options, model: FittedFeatures) -> dict:
    return {
        "kind": options.model,
        "backbone": {"name": "MobileNetV2 1.0 (ImageNet), TF2 post-training int8", "file": backbones.BACKBONE_FILE,
                     "layers": list(backbones.CUT_TENSORS), "strides": list(backbones.STRIDES),
                     "channels": model.layer_channels, "input_scale": model.input_scale,
                     "input_zero": model.input_zero},
        "head": {"type": model.head_type, "file": HEAD_FILE, "sha256": model.head_sha256, **model.details},
    }
