"""Training and evaluation sets: MVTec AD folders, Keras mnist.npz, or MNIST IDX files."""
from __future__ import annotations

import gzip
import hashlib
import logging
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.core.preprocess import ImageError, PreprocessSpec, image_files, preprocess, read_image
from edge.text import one_line

logger = logging.getLogger(__name__)

COLOR_PROBE_IMAGES = 8
IDX_IMAGE_MAGIC = 2051
IDX_LABEL_MAGIC = 2049
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class DataError(ValueError):
    """Unusable training or evaluation data; the message names the file or folder."""


def read_checked(path: Path, color: str, what: str = "image") -> np.ndarray:
    """An image file through the device's bounded reader (edge.core.preprocess.read_image): the same size and
    pixel limits, formats and bit depths in training as on the device. DataError names the file."""
    try:
        return read_image(path, color)
    except ImageError as exc:
        raise DataError(str(exc) if what == "image" else f"{exc} ({what})") from None


@dataclass
class Sample:
    """One image: in memory (MNIST) or on disk (folders)."""

    name: str
    label: int = 0  # 0 good, 1 anomalous
    defect: str = "good"
    path: Path | None = None
    array: np.ndarray | None = None
    mask_path: Path | None = None

    def image(self, color: str) -> np.ndarray:
        if self.array is not None:
            return self.array
        return read_checked(self.path, color)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ground-truth mask resized to (height, width); all False for good images or no mask."""
        if self.mask_path is None:
            return np.zeros(shape, dtype=bool)
        mask = read_checked(self.mask_path, "gray", "mask image")
        half = np.iinfo(mask.dtype).max // 2 if mask.dtype.kind in "iu" else 0.5  # 127 for 8 bits, as before
        return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > half


@dataclass
class Dataset:
    train: list[Sample]
    test: list[Sample]
    color: str
    description: str
    sizes: set[tuple[int, int]] = field(default_factory=set)  # distinct (height, width) of the images
    anomaly_classes_named: bool = False  # the study's protocol: anomalous classes chosen on the command line

    def fingerprint(self) -> str:
        """Short hash of the sample names and labels, to tell later which data made a model."""
        digest = hashlib.sha256()
        for sample in self.train + self.test:
            digest.update(f"{sample.name}:{sample.label}\n".encode())
        return digest.hexdigest()[:16]


def _require_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing folder ({what})")
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no images in this folder ({what})")
    return files


def _mask_for(root: Path, defect: str, image: Path) -> Path | None:
    candidate = root / "ground_truth" / defect / f"{image.stem}_mask.png"
    return candidate if candidate.is_file() else None


def detect_color(paths: list[Path]) -> str:
    """'rgb' when any of the first images has distinct colour channels, else 'gray'."""
    for path in paths[:COLOR_PROBE_IMAGES]:
        image = read_checked(path, "bgr")  # gray files decode to three equal channels
        if image.ndim == 3 and image.shape[2] >= 3:
            b, g, r = image[..., 0], image[..., 1], image[..., 2]
            if not (np.array_equal(b, g) and np.array_equal(g, r)):
                return "rgb"
    return "gray"


def image_sizes(paths: list[Path]) -> set[tuple[int, int]]:
    """Distinct (height, width) of image files, decoded as the device decodes them."""
    sizes = set()
    for path in paths:
        sizes.add(read_checked(path, "gray").shape[:2])
    return sizes


def load_mvtec(root: Path, color: str = "auto") -> Dataset:
    """MVTec AD layout: train/good, test/good, test/<defect>, optional ground_truth/<defect>/<name>_mask.png."""
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    train_files = _require_images(root / "train" / "good", "training images of good parts")
    train = [Sample(name=f"train/good/{p.name}", path=p) for p in train_files]
    test = []
    test_root = root / "test"
    if test_root.is_dir():
        for defect_dir in sorted(d for d in test_root.iterdir() if d.is_dir()):
            defect = defect_dir.name
            for path in image_files(defect_dir):
                label = 0 if defect == "good" else 1
                mask = None if label == 0 else _mask_for(root, defect, path)
                test.append(Sample(f"test/{defect}/{path.name}", label, defect, path=path, mask_path=mask))
    all_paths = [s.path for s in train + test]
    chosen = detect_color(train_files) if color == "auto" else color
    return Dataset(train, test, chosen, f"MVTec-layout folder {root}", image_sizes(all_paths))


def _class_samples(images: np.ndarray, labels: np.ndarray, digit: int, split: str, label: int) -> list[Sample]:
    indices = np.flatnonzero(labels == digit)
    defect = "good" if label == 0 else f"digit-{digit}"
    return [Sample(f"{split}/{digit}/{i:05d}", label, defect, array=images[i]) for i in indices]


def _check_classes(arrays: dict[str, np.ndarray], source: str, normal: int, anomaly: list[int]) -> None:
    """Refuse missing classes now, not after training: best-f1 calibration needs the anomalies in the test set."""
    present = sorted(set(arrays["y_train"].tolist()) | set(arrays["y_test"].tolist()))
    for digit in [normal, *anomaly]:
        if digit not in present:
            raise DataError(f"{source}: class {digit} not found (classes present: {present})")
    for digit in anomaly:
        if not np.any(arrays["y_test"] == digit):
            raise DataError(f"{source}: no test images of anomaly class {digit} (x_test/y_test)")


def _mnist_dataset(arrays: dict[str, np.ndarray], source: str, normal: int, anomaly: list[int]) -> Dataset:
    _check_classes(arrays, source, normal, anomaly)
    train = _class_samples(arrays["x_train"], arrays["y_train"], normal, "train", 0)
    if not train:
        raise DataError(f"{source}: no training images of class {normal}")
    test = _class_samples(arrays["x_test"], arrays["y_test"], normal, "test", 0)
    for digit in anomaly:
        test += _class_samples(arrays["x_test"], arrays["y_test"], digit, "test", 1)
    size = arrays["x_train"].shape[1:3]
    description = f"{source} (normal {normal}, anomalous {anomaly})"
    return Dataset(train, test, "gray", description, {tuple(size)}, anomaly_classes_named=True)


def _unreadable_npz(path: Path, reason: str) -> DataError:
    return DataError(f"{path}: not a readable .npz of images and labels ({reason})")


def _open_failure_reason(exc: Exception) -> str:
    # numpy falls back to pickle for anything that is neither .npz nor .npy: that is not an archive at all
    if "pickle" in str(exc) or isinstance(exc, zipfile.BadZipFile):
        return "not a zip archive of named arrays"
    return f"damaged archive: {one_line(exc, limit=120)}"


def _array_failure_reason(exc: Exception) -> str:
    # numpy's wording suggests allow_pickle, which must never be used on data files: name the cause only
    if "pickle" in str(exc):
        return "object arrays, which need pickle and are never loaded"
    return one_line(exc, limit=120)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = np.load(path)
    except NPZ_READ_ERRORS as exc:
        raise _unreadable_npz(path, _open_failure_reason(exc)) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _unreadable_npz(path, "one bare array, not named arrays")
    return data


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with _open_npz(path) as data:
        missing = [k for k in NPZ_ARRAYS if k not in data.files]
        if missing:
            raise DataError(f"{path}: missing array {', '.join(missing)} (expected {', '.join(NPZ_ARRAYS)})")
        arrays = {}
        for key in NPZ_ARRAYS:
            try:
                arrays[key] = data[key]
            except NPZ_READ_ERRORS as exc:
                raise _unreadable_npz(path, f"{key}: {_array_failure_reason(exc)}") from None
        return arrays


def _check_npz_shapes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Mismatched arrays would otherwise fail later with an index error far from the file."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3:
            raise DataError(f"{path}: x_{split} must be N x H x W, got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{path}: y_{split} must hold one label per x_{split} image, "
                            f"got shape {labels.shape} for {len(images)} images")


def load_npz(path: Path, normal: int, anomaly: list[int]) -> Dataset:
    """Keras-format mnist.npz: x_train, y_train, x_test, y_test."""
    arrays = _read_npz(path)
    _check_npz_shapes(path, arrays)
    return _mnist_dataset(arrays, str(path), normal, anomaly)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an IDX file of the expected kind (magic {magic})")
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({data.size} values for shape {shape})")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing IDX file {stem}[.gz]")


def load_idx(folder: Path, normal: int, anomaly: list[int]) -> Dataset:
    """MNIST-format IDX files in one folder (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...)."""
    arrays = {
        "x_train": _read_idx(_find_idx(folder, "train-images-idx3-ubyte"), IDX_IMAGE_MAGIC),
        "y_train": _read_idx(_find_idx(folder, "train-labels-idx1-ubyte"), IDX_LABEL_MAGIC),
        "x_test": _read_idx(_find_idx(folder, "t10k-images-idx3-ubyte"), IDX_IMAGE_MAGIC),
        "y_test": _read_idx(_find_idx(folder, "t10k-labels-idx1-ubyte"), IDX_LABEL_MAGIC),
    }
    return _mnist_dataset(arrays, str(folder), normal, anomaly)


def load_dataset(path: str | Path, normal: int = 1, anomaly: list[int] | None = None, color: str = "auto") -> Dataset:
    """Pick the loader from what `path` is."""
    root = Path(path)
    anomaly = anomaly if anomaly is not None else [9]
    if root.suffix == ".npz":
        return load_npz(root, normal, anomaly)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_dir() and any(root.glob("*idx3-ubyte*")):
        return load_idx(root, normal, anomaly)
    if root.is_dir():
        return load_mvtec(root, color)
    raise DataError(f"{root}: expected an MVTec-layout folder, a .npz file or a folder of IDX files")


def add_extra_good(dataset: Dataset, folders: list[Path]) -> Dataset:
    """Add the ``train/good`` images of more MVTec-layout folders (the station's feedback folder) to the
    training images, as they are: read in the data's colour mode and resized like every other image."""
    for folder in folders:
        files = _require_images(folder / "train" / "good", "good images for --extra-good")
        dataset.train += [Sample(name=f"extra-good/{folder.name}/{p.name}", path=p) for p in files]
        dataset.sizes |= image_sizes(files)
        dataset.description += f" + {len(files)} extra good images from {folder}"
    return dataset


def summarize(dataset: Dataset) -> str:
    counts = Counter(s.defect for s in dataset.test)
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"{dataset.description}: {len(dataset.train)} training images; test: {parts or 'none'}"


def load_arrays(samples: list[Sample], spec: PreprocessSpec) -> np.ndarray:
    """The samples as the model input (N x H x W x C float32), preprocessed as the device does."""
    out = np.empty((len(samples), *spec.shape), dtype=np.float32)
    for i, sample in enumerate(tqdm(samples, desc="loading", unit="img", leave=False, mininterval=0.5)):
        try:
            out[i] = preprocess(sample.image(spec.color), spec)
        except ValueError as exc:
            raise DataError(f"{sample.path or sample.name}: {exc}") from None
    return out
