"""Kind ``camera``: a V4L2 camera (/dev/videoN), read by the grabber thread of edge.capture.live."""
from __future__ import annotations

import errno
import math
import os
from typing import Literal

import cv2
from pydantic import Field

from edge.capture.base import StateCallback
from edge.capture.kinds import SourceKind, register
from edge.capture.live import LiveSource
from edge.capture.settings import LiveSettings

V4L2_SELECT_TIMEOUT_ENV = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"


class CameraConfig(LiveSettings):
    """source.kind camera: the device index and the capture size asked of it."""

    kind: Literal["camera"] = Field("camera", description="A V4L2 camera (USB, or a CSI camera through V4L2).")
    index: int = Field(0, ge=0, strict=True, description="V4L2 camera index (/dev/videoN).")
    width: int | None = Field(None, gt=0, strict=True, description="Requested camera capture width in pixels.")
    height: int | None = Field(None, gt=0, strict=True, description="Requested camera capture height in pixels.")

    def label(self) -> str:
        return f"camera /dev/video{self.index}"


def open_camera(config: CameraConfig, grayscale: bool, on_state: StateCallback | None) -> LiveSource:
    # OpenCV reads this once per process, on the first V4L2 wait; the default is 10 s.
    os.environ.setdefault(V4L2_SELECT_TIMEOUT_ENV, str(max(1, math.ceil(config.read_timeout_s))))
    return LiveSource(config, lambda: _open_v4l2(config), grayscale, on_state)


def _open_v4l2(config: CameraConfig) -> cv2.VideoCapture:
    device = f"/dev/video{config.index}"
    if not os.path.exists(device):  # OpenCV only says it could not open; say why
        raise OSError(errno.ENODEV, "no such device")
    capture = cv2.VideoCapture(config.index, cv2.CAP_V4L2)
    if capture.isOpened():
        if config.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        if config.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        if config.fps > 0:
            capture.set(cv2.CAP_PROP_FPS, config.fps)
    return capture


KIND = register(SourceKind(config=CameraConfig, opener=open_camera))  # a camera may come later: no problems
