"""Image preprocessing, defined once: the trainer and the device both call this module.

The exact specification is stored in the model bundle, so the device applies what training applied.
Pixel scaling follows the image dtype (uint8 -> /255, uint16 -> /65535), never the image's own maximum,
so a dark frame is not stretched.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

COLOR_MODES = ("gray", "rgb")  # what a model takes
DECODE_COLORS = (*COLOR_MODES, "bgr")  # what a file is decoded to; capture sources deliver BGR
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")


class ImageError(ValueError):
    """An image that cannot be read or used; the message names the file."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How a captured frame becomes a model input."""

    color: str = "gray"  # "gray" or "rgb"
    height: int = 28
    width: int = 28
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in source pixels, applied before resizing

    def __post_init__(self) -> None:
        if self.color not in COLOR_MODES:
            raise ValueError(f"preprocess.color must be one of {COLOR_MODES}, got {self.color!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"preprocess size must be positive, got {self.height}x{self.width}")

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roi"] = list(self.roi) if self.roi else None
        data["scaling"] = "dtype"  # documents the contract; there is only one rule
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        roi = data.get("roi")
        return cls(
            color=data["color"],
            height=int(data["height"]),
            width=int(data["width"]),
            roi=tuple(int(v) for v in roi) if roi else None,
        )


def image_files(folder: Path) -> list[Path]:
    """The image files in a folder (by suffix), in name order."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: p.name)


def read_image(path: str | Path, color: str) -> np.ndarray:
    """Decode an image file as gray (HxW), RGB or BGR (HxWx3), keeping its depth (uint8 or uint16).

    The one decoder for image files: `lineguard score`, the trainer and the folder source all call it, so a
    16-bit file gives the same model input everywhere. Raises ImageError naming the file.
    """
    if color not in DECODE_COLORS:
        raise ValueError(f"color must be one of {DECODE_COLORS}, got {color!r}")
    file = Path(path)
    if not file.is_file():
        raise ImageError(f"{path}: {'a folder, not an image file' if file.is_dir() else 'no such image file'}")
    flags = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR)
    try:
        data = np.fromfile(file, dtype=np.uint8)
        image = cv2.imdecode(data, flags) if data.size else None
    except OSError as exc:  # removed or unreadable since the check above
        raise ImageError(f"{path}: {exc.strerror or exc}") from None
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{path}: not a readable image")
    if color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit copy of a frame for display (overlays, JPEG evidence); 16-bit frames are scaled by dtype."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=255 / 65535)
    raise ImageError(f"unsupported pixel type {image.dtype}")


def to_color(image: np.ndarray, color: str, bgr: bool = False) -> np.ndarray:
    """Bring a frame to the spec's colour mode. Camera frames are BGR (bgr=True); files read here are RGB."""
    if color == "gray":
        if image.ndim == 2:
            return image
        code = cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY
        return cv2.cvtColor(image, code)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def crop(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop to an (x, y, w, h) region; a region outside the frame is an error, not a silent clip."""
    if roi is None:
        return image
    x, y, w, h = roi
    height, width = image.shape[:2]
    if x + w > width or y + h > height:
        raise ImageError(f"roi {list(roi)} lies outside the {width}x{height} frame")
    return image[y : y + h, x : x + w]


def resize(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize to the model size; INTER_AREA when shrinking avoids aliasing of fine defects."""
    if image.shape[0] == spec.height and image.shape[1] == spec.width:
        return image
    shrinking = image.shape[0] > spec.height or image.shape[1] > spec.width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (spec.width, spec.height), interpolation=interpolation)


def scale(image: np.ndarray) -> np.ndarray:
    """Scale to float32 in [0, 1] by dtype."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1 / 255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1 / 65535)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image, 0, 1).astype(np.float32)
    raise ImageError(f"unsupported pixel type {image.dtype}")


def to_pixels(image: np.ndarray, spec: PreprocessSpec, bgr: bool = False) -> np.ndarray:
    """Colour, crop and resize a frame; keeps its dtype and returns HxWxC."""
    image = resize(crop(to_color(image, spec.color, bgr=bgr), spec.roi), spec)
    return image.reshape(spec.shape)


def preprocess(image: np.ndarray, spec: PreprocessSpec, bgr: bool = False) -> np.ndarray:
    """Frame -> float32 HxWxC model input in [0, 1]."""
    return scale(to_pixels(image, spec, bgr=bgr))
