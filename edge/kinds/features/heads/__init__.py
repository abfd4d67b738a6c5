"""Heads of the `features` kind, one module each: backbone patch features -> one anomaly distance per patch, in
vectorised numpy. One registry both fits and loads them, through the same checks.

The head's parameters live in the bundle as an .npz file whose sha256 model.json records; a file that does not
match, will not load, or holds arrays that do not fit stops the bundle from loading (fail closed). Freshly fitted
arrays pass the same checks before the trainer scores with them.

To add a head: a module here with one class (see knn.py: `type`, `fit`, `from_arrays`, `check_grid`,
`distances`), and one `register_head` line below.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from edge.core.files import read_limited
from edge.kinds.features.heads.base import HEAD_FILE, Head, HeadError, HeadFit, check_arrays, require
from edge.kinds.features.heads.knn import GlobalKnnHead
from edge.kinds.features.heads.padim import PadimHead, cell_order, pack_upper, unpack_upper
from edge.kinds.features.heads.patchcore import PatchcoreHead

HEADS: dict[str, type[Head]] = {}
MAX_HEAD_BYTES = 256 * 1024 * 1024  # held twice while loading (file and arrays): more cannot fit MemoryMax=512M


def register_head(head_class: type[Head]) -> type[Head]:
    HEADS[head_class.type] = head_class
    return head_class


register_head(PadimHead)
register_head(PatchcoreHead)
register_head(GlobalKnnHead)


def head_from_arrays(head_type: str, arrays: dict[str, np.ndarray], path: Path, feature_channels: int) -> Head:
    """The checked head on arrays read from a file or just fitted; HeadError names `path` and the problem."""
    if head_type not in HEADS:
        raise HeadError(f"{path}: head type {head_type!r} is not one of {', '.join(HEADS)}")
    check_arrays(arrays, path, feature_channels)
    return HEADS[head_type].from_arrays(arrays, path)


def fit_head(head_type: str, features: np.ndarray,
             setting: HeadFit) -> tuple[dict[str, np.ndarray], dict, Head]:
    """Fit a head on (images, positions, channels) features: its arrays (what the bundle stores), what model.json
    records about it, and the head built from the arrays as the device will read them back."""
    if head_type not in HEADS:
        raise HeadError(f"head type {head_type!r} is not one of {', '.join(HEADS)}")
    arrays, details = HEADS[head_type].fit(features, setting)
    head = head_from_arrays(head_type, arrays, Path(f"<fitted {head_type} head>"), features.shape[2])
    if setting.grid is not None:
        head.check_grid(setting.grid, Path(f"<fitted {head_type} head>"))
    return arrays, details, head


def _read_arrays(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    try:  # bounded, regular files only: a FIFO cannot hang the start, /dev/zero cannot fill the memory
        data = read_limited(path, MAX_HEAD_BYTES)
    except OSError as exc:
        raise HeadError(f"{path}: cannot read the head file: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise HeadError(f"{path}: sha256 {actual[:12]}… does not match model.json ({str(expected_sha256)[:12]}…); "
                        "the head file is corrupt or from another bundle")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:  # the bytes just verified
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise HeadError(f"{path}: not a readable head file: {exc}") from None


def load_head(path: Path, head_type: str, sha256: str, feature_channels: int) -> Head:
    """Read, verify and check a head file against the backbone's channel count."""
    if head_type not in HEADS:
        raise HeadError(f"{path}: head type {head_type!r} is not one of {', '.join(HEADS)}")
    return head_from_arrays(head_type, _read_arrays(path, sha256), path, feature_channels)


__all__ = ["HEADS", "HEAD_FILE", "GlobalKnnHead", "Head", "HeadError", "HeadFit", "PadimHead", "PatchcoreHead",
           "cell_order", "fit_head", "head_from_arrays", "load_head", "pack_upper", "register_head", "require",
           "unpack_upper"]
