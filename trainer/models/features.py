"""The `features` kind: an ImageNet MobileNetV2 (models/backbones/) and a head fitted on its patch features.

Nothing is trained by gradient descent: the head's statistics come from the good images' features, extracted by
the int8 backbone through the device's own code (edge.core.pipelines.features.BackboneFeatures), so the device
scores exactly the features the head was fitted on. Heads: `padim` (a Gaussian per patch position) and
`patchcore` (a coreset of good patches); edge.core.feature_heads runs them.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.core.bundle import Stage, sha256_of
from edge.core.feature_heads import HEAD_FILE, pack_upper
from edge.core.files import write_bytes_atomic
from edge.core.pipelines.features import BackboneFeatures
from edge.core.runtime import TFLiteStage
from trainer import backbones

logger = logging.getLogger(__name__)

BACKBONE_NAME = "backbone.tflite"
BACKBONE_FLOAT_NAME = "backbone_float.tflite"
PADIM_EPSILON = 0.01  # added to every covariance diagonal, as in the PaDiM paper: keeps it invertible
FIT_BATCH = 32  # images whose patch statistics are added up in one matrix product
BUNDLE_LIMIT_BYTES = 16_000_000  # the head is kept so that the whole bundle stays under this
PRECISION_BYTES = 2  # float16 per stored precision value


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


def _backbone(size: tuple[int, int]) -> tuple[bytes, bytes]:
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


def channel_budget(positions: int, channels: int, other_bytes: int) -> int:
    """The most channels whose float16 precision triangles keep the bundle under BUNDLE_LIMIT_BYTES."""
    room = BUNDLE_LIMIT_BYTES - other_bytes - positions * channels * 4
    best = channels
    while best > 8 and positions * best * (best + 1) // 2 * PRECISION_BYTES > room:
        best -= 1
    return best


def choose_channels(variances: np.ndarray, count: int) -> np.ndarray:
    """The `count` channels with the largest mean variance over positions (flat channels carry little)."""
    if count >= variances.size:
        return np.arange(variances.size, dtype=np.int32)
    return np.sort(np.argsort(-variances, kind="stable")[:count]).astype(np.int32)


def fit_padim(features, positions: int, channels: int, budget_bytes: int) -> tuple[dict[str, np.ndarray], dict]:
    """Mean and precision per position, summed over batches of images (never all patches in memory)."""
    total = np.zeros((positions, channels), np.float64)
    outer = np.zeros((positions, channels, channels), np.float64)
    count, batch = 0, []
    for feature in features:
        batch.append(feature)
        if len(batch) == FIT_BATCH:
            count += _accumulate(batch, total, outer)
            batch = []
    if batch:
        count += _accumulate(batch, total, outer)
    if count < 2:
        raise ValueError("PaDiM needs at least 2 training images")
    mean = total / count
    cov = (outer - count * mean[:, :, None] * mean[:, None, :]) / (count - 1)
    keep = choose_channels(np.einsum("pcc->c", cov) / positions,
                           channel_budget(positions, channels, budget_bytes))
    cov = cov[:, keep][:, :, keep] + PADIM_EPSILON * np.eye(keep.size)
    precision = np.linalg.inv(cov)
    precision = (precision + np.swapaxes(precision, 1, 2)) / 2
    arrays = {"channels": keep, "mean": mean[:, keep].astype(np.float32),
              "precision_upper": pack_upper(precision).astype(np.float16)}
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError("PaDiM statistics are not finite (are the training images all the same?)")
    return arrays, {"images": count, "channels_kept": int(keep.size), "channels_total": channels,
                    "covariance_epsilon": PADIM_EPSILON, "precision_storage": "float16 upper triangles"}


def _accumulate(batch: list[np.ndarray], total: np.ndarray, outer: np.ndarray) -> int:
    stacked = np.stack(batch, axis=1).astype(np.float64)  # (positions, n, channels)
    total += stacked.sum(axis=1)
    outer += np.matmul(np.swapaxes(stacked, 1, 2), stacked)
    return len(batch)


def fit(options, x_train: np.ndarray) -> FittedFeatures:
    int8_bytes, float_bytes = _backbone(options.size)
    with tempfile.TemporaryDirectory(prefix="lineguard-backbone-") as folder:
        extractor = open_extractor(int8_bytes, Path(folder), options.threads)
        positions = extractor.grid[0] * extractor.grid[1]
        layer_channels = [extractor.stage.output_shape[-1], *(s[-1] for _, s, *_ in extractor.stage.extra_outputs)]
        logger.info("backbone: ImageNet MobileNetV2 cut at stride 8 and 16, %d patches of %d channels per image",
                    positions, extractor.channels)
        other = len(int8_bytes) + len(float_bytes)
        arrays, details = fit_padim(extract(extractor, x_train), positions, extractor.channels, other)
        scale, zero = extractor.input_scale, extractor.input_zero
    logger.info("padim head: %d of %d channels, %d positions", details["channels_kept"], extractor.channels,
                positions)
    return FittedFeatures(int8_bytes, float_bytes, "padim", arrays, float(scale), float(zero), layer_channels,
                          details)


def export(model: FittedFeatures, x_train: np.ndarray, folder: Path, seed: int) -> list[Stage]:
    """The sized int8 backbone, its float twin and the head file; the head's hash goes into the architecture."""
    write_bytes_atomic(folder / BACKBONE_NAME, model.backbone_int8)
    write_bytes_atomic(folder / BACKBONE_FLOAT_NAME, model.backbone_float)
    with open(folder / HEAD_FILE, "wb") as handle:
        np.savez(handle, **model.arrays)
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
