"""Image preprocessing, defined once: the trainer and the device both call this module.

The exact specification is stored in the model bundle, so the device applies what training applied.
Pixel scaling follows the image dtype (uint8 -> /255, uint16 -> /65535), never the image's own maximum,
so a dark frame is not stretched.
"""
from __future__ import annotations

import errno
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge import MAX_IMAGE_PIXELS
from edge.core.files import read_limited

# Limits on what read_image decodes, checked before decoding: a small file can declare a huge image (a 389 KB
# PNG of 20000x20000 decodes to 400 MB). MAX_IMAGE_PIXELS (50 megapixels) is above any line camera this runs
# with; the file limit covers an uncompressed 16-bit colour TIFF of 20 megapixels.
MAX_IMAGE_FILE_BYTES = 128 * 1024 * 1024

COLOR_MODES = ("gray", "rgb")  # what a model takes
DECODE_COLORS = (*COLOR_MODES, "bgr")  # what a file is decoded to; capture sources deliver BGR
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
FORMATS = "PNG, JPEG, BMP, TIFF, PNM (PGM/PPM) or WebP"


class ImageError(ValueError):
    """An image that cannot be read or used; the message names the file."""


class ImageReadFault(ImageError):
    """The machine, not the file, failed the read (out of file descriptors or memory, an I/O error): the same
    file may read fine a moment later, so a replay retries it instead of skipping it."""


MACHINE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN, errno.EINTR,
                            errno.EIO})


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
    16-bit file gives the same model input everywhere. Before decoding, the file must be a regular file of at
    most MAX_IMAGE_FILE_BYTES in one of FORMATS, and its header must declare at most MAX_IMAGE_PIXELS.
    Raises ImageError naming the file.
    """
    if color not in DECODE_COLORS:
        raise ValueError(f"color must be one of {DECODE_COLORS}, got {color!r}")
    try:
        data = read_limited(path, MAX_IMAGE_FILE_BYTES)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except OSError as exc:
        error = ImageReadFault if exc.errno in MACHINE_ERRNOS else ImageError
        raise error(f"{path}: {exc.strerror or exc}") from None
    size = image_size(data)
    if size is None:
        raise ImageError(f"{path}: not a readable image (not a {FORMATS} file)")
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: {width}x{height} pixels is above the limit of {MAX_IMAGE_PIXELS:,} pixels; "
                         "not decoded")
    flags = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{path}: not a readable image")
    if color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


# ---------------------------------------------------------------- image size from the file header


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header of an image file declares it, or None for any other content.

    OpenCV picks the decoder by content, not by name, so the content decides here too.
    """
    try:
        for magic, reader in _HEADER_READERS:
            if data.startswith(magic):
                return reader(data)
    except (struct.error, IndexError, KeyError, ValueError):
        return None
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# JPEG start-of-frame markers (SOF0-SOF15 without DHT, JPG and DAC) carry the frame's size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM
# Real files have a few dozen markers before the frame header; a crafted one may not make the search long.
_JPEG_MAX_MARKERS = 10_000
_TIFF_MAX_TAGS = 1_000


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    for _ in range(_JPEG_MAX_MARKERS):
        if position + 4 > len(data):
            return None
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            position += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        if marker == 0xDA:  # image data before any frame header
            return None
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """Width and length of the first image (the one OpenCV decodes); classic TIFF and BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    offset_format, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    ifd = struct.unpack(order + offset_format, data[8:16] if big else data[4:8])[0]
    count_size = struct.calcsize(count_format)
    entries = struct.unpack(order + count_format, data[ifd:ifd + count_size])[0]
    found = {}
    for number in range(min(entries, _TIFF_MAX_TAGS)):
        entry = ifd + count_size + number * entry_size
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3), LONG (4) or LONG8 (16)
            value_at = entry + (12 if big else 8)
            value_format = {3: "H", 4: "I", 16: "Q"}[kind]
            value_end = value_at + struct.calcsize(value_format)
            found[tag] = struct.unpack(order + value_format, data[value_at:value_end])[0]
    return (found[256], found[257]) if len(found) == 2 else None


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\d{1,10})")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)\s+(\d+)", re.MULTILINE)


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    """P1-P6 (PBM, PGM, PPM) and PF/Pf (PFM): width and height follow the magic; P7 (PAM) names them."""
    if data[:2] == b"P7":
        fields = {name: int(value) for name, value in _PAM_FIELD.findall(data[:4096])}
        return (fields[b"WIDTH"], fields[b"HEIGHT"]) if len(fields) == 2 else None
    if data[1:2] not in b"123456Ff" or not data[2:3].isspace():
        return None
    width = _PNM_TOKEN.match(data, 2)
    height = _PNM_TOKEN.match(data, width.end()) if width else None
    return (int(width.group(1)), int(height.group(1))) if height else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":  # lossless: 14-bit width-1 and height-1 after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


_HEADER_READERS = (
    (b"\x89PNG\r\n\x1a\n", _png_size),
    (b"\xff\xd8", _jpeg_size),
    (b"BM", _bmp_size),
    (b"II*\x00", _tiff_size), (b"MM\x00*", _tiff_size), (b"II+\x00", _tiff_size), (b"MM\x00+", _tiff_size),
    (b"P", _pnm_size),
    (b"RIFF", _webp_size),
)


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
