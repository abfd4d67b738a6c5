"""Kind ``video``: every frame of a video file in order; looping reopens the file."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from edge.capture.base import CaptureError, StateCallback
from edge.capture.kinds import SourceKind, register
from edge.capture.replay import ReadFault, ReplaySource
from edge.capture.settings import ReplaySettings

logger = logging.getLogger(__name__)


class VideoConfig(ReplaySettings):
    """source.kind video: source.path is a video file."""

    kind: Literal["video"] = Field("video", description="Every frame of a video file (source.path), in order.")


def video_problems(config: VideoConfig) -> list[tuple[str, str]]:
    """Why this video file cannot be replayed, as (key, message) pairs."""
    if not Path(config.path).is_file():
        return [("path", f"video file not found: {config.path}")]
    return []


def open_video(config: VideoConfig, grayscale: bool, on_state: StateCallback | None) -> VideoSource:
    return VideoSource(config, grayscale, on_state)


class VideoSource(ReplaySource):
    """Every frame of a video file in order, BGR as OpenCV decodes it; looping reopens the file."""

    def __init__(self, config: VideoConfig, grayscale: bool = False, on_state: StateCallback | None = None) -> None:
        super().__init__(config, grayscale, on_state)
        self._path = Path(config.path)
        self._capture = self._open()
        self._frame_in_file = 0
        self._reopening = False  # a loop's reopen failed: the next read tries it again
        logger.info("replaying video %s", self._path)

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self._path))
        if not capture.isOpened():
            capture.release()
            raise CaptureError(f"cannot decode video file: {self._path}")
        return capture

    def _next_image(self) -> tuple[np.ndarray, str] | None:
        if self._capture is None:
            if not self._reopening:
                return None
            ok, image = self._restart()
        else:
            ok, image = self._capture.read()
        if not ok and self._config.loop and self._frame_in_file > 0:
            ok, image = self._restart()
        if not ok or image is None:
            self._release()
            return None
        name = f"{self._path.name}#{self._frame_in_file}"
        self._frame_in_file += 1
        return image, name

    def _restart(self) -> tuple[bool, np.ndarray | None]:
        # Reopening is more reliable than seeking for many containers.
        self._release()
        self._frame_in_file = 0
        self._reopening = True
        try:
            self._capture = self._open()
        except CaptureError as exc:
            # The file vanished or broke mid-replay (or the machine is out of file descriptors): a loop has no
            # end, so it retries rather than end with exit 0 as though it had finished.
            raise ReadFault(str(exc)) from None
        self._reopening = False
        return self._capture.read()


KIND = register(SourceKind(config=VideoConfig, opener=open_video, problems=video_problems))
