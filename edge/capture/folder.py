"""Kind ``folder``: every image file of a folder in name order, decoded as `lineguard score` decodes it."""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from edge.capture.base import StateCallback
from edge.capture.kinds import SourceKind, register
from edge.capture.replay import ReadFault, ReplaySource
from edge.capture.settings import ReplaySettings
from edge.core.preprocess import IMAGE_SUFFIXES, ImageError, ImageReadFault, image_files, read_image

logger = logging.getLogger(__name__)

# Folder replay decodes the next file on a second thread while the current frame is inspected, when files
# are this large on average (a 256x256 PNG takes about a millisecond to decode); tiny files decode faster
# than a hand-over between threads costs.
PREFETCH_MIN_MEAN_BYTES = 16 * 1024
PREFETCH_SAMPLE_FILES = 8

Decoded = tuple[np.ndarray | None, ImageError | None]  # the image, or None and why not


class FolderConfig(ReplaySettings):
    """source.kind folder: source.path is a folder of images."""

    kind: Literal["folder"] = Field("folder", description="Every image file of a folder (source.path), in name order.")


def folder_problems(config: FolderConfig) -> list[tuple[str, str]]:
    """Why this folder cannot be replayed, as (key, message) pairs."""
    if not Path(config.path).is_dir():
        return [("path", f"image folder not found: {config.path}")]
    return []


def open_folder(config: FolderConfig, grayscale: bool, on_state: StateCallback | None) -> FolderSource:
    return FolderSource(config, grayscale, on_state)


class FolderSource(ReplaySource):
    """Every image file of a folder in name order; unreadable files are skipped and counted.

    Files keep their depth: a 16-bit PNG is delivered as uint16, exactly as `lineguard score` reads it.
    Large files are decoded one ahead on a worker thread (see PREFETCH_MIN_MEAN_BYTES); counting, logging
    and the order of frames happen as each file is taken, exactly as without the worker.
    """

    def __init__(self, config: FolderConfig, grayscale: bool = False, on_state: StateCallback | None = None) -> None:
        super().__init__(config, grayscale, on_state)
        self._files = _list_images(Path(config.path))
        self._position = 0
        self._read_any_this_pass = False
        self._color = "gray" if grayscale else "bgr"
        self._prefetcher = _Prefetcher(self._decode_file) if _worth_prefetching(self._files) else None
        logger.info("replaying %d images from %s", len(self._files), config.path)

    def _release(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()

    def _next_image(self) -> tuple[np.ndarray, str] | None:
        while True:
            if self._position == len(self._files):
                if not self._config.loop:
                    return None  # the real end: every file was taken, read or counted unreadable
                self._position = 0
                if not self._read_any_this_pass:  # rather than spin, or end a loop that never ends
                    raise ReadFault(f"no image of {self._config.path} could be read ({len(self._files)} file(s))")
                self._read_any_this_pass = False
            path = self._files[self._position]
            self._position += 1
            image = self._decode(path)
            if image is not None:
                self._read_any_this_pass = True
                self._prefetch_next()
                return image, path.name

    def _prefetch_next(self) -> None:
        if self._prefetcher is None:
            return
        if self._position < len(self._files):
            self._prefetcher.start(self._files[self._position])
        elif self._config.loop:
            self._prefetcher.start(self._files[0])

    def _decode_file(self, path: Path) -> Decoded:
        """Decode one file; no side effects, so it may run on the prefetch thread."""
        try:
            return read_image(path, self._color), None
        except ImageError as exc:
            return None, exc

    def _decode(self, path: Path) -> np.ndarray | None:
        decoded = self._prefetcher.take(path) if self._prefetcher is not None else None
        image, problem = decoded if decoded is not None else self._decode_file(path)
        if isinstance(problem, ImageReadFault):
            self._position -= 1  # the file is not at fault: it is read again on the next try
            raise ReadFault(str(problem))
        if image is None:
            self._unreadable += 1
            self._last_error = f"unreadable image {problem}"
            logger.warning("skipping unreadable image %s", problem)
        return image


class _Prefetcher:
    """Decodes one file ahead on a single worker thread."""

    def __init__(self, decode: Callable[[Path], Decoded]) -> None:
        self._decode = decode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-prefetch")
        self._pending: tuple[Path, Future] | None = None

    def start(self, path: Path) -> None:
        try:
            self._pending = (path, self._executor.submit(self._decode, path))
        except RuntimeError:  # closed meanwhile: the caller decodes synchronously
            self._pending = None

    def take(self, path: Path) -> Decoded | None:
        """The decoded file if it was prefetched, else None (the caller decodes it itself)."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != path or pending[1].cancelled():
            return None
        return pending[1].result()

    def close(self) -> None:
        self._pending = None
        self._executor.shutdown(wait=False, cancel_futures=True)


def _worth_prefetching(files: list[Path]) -> bool:
    sizes = []
    for path in files[:PREFETCH_SAMPLE_FILES]:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            continue
    return bool(sizes) and sum(sizes) / len(sizes) >= PREFETCH_MIN_MEAN_BYTES


def _list_images(folder: Path) -> list[Path]:
    files = image_files(folder)
    if not files:
        # Not an error: a restart on an emptied folder still delivers what the outbox holds.
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        logger.warning("no images (%s) in folder %s: nothing to replay", suffixes, folder)
    return files


KIND = register(SourceKind(config=FolderConfig, opener=open_folder, problems=folder_problems))
