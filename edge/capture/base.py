"""What every frame source shares: the Frame it delivers, the FrameSource protocol and state reporting."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

STATE_RUNNING = "running"
STATE_RECONNECTING = "reconnecting"
STATE_ENDED = "ended"

_USERINFO_PATTERN = re.compile(r"(//[^/:@]*):[^/]*@")  # greedy to the last '@': passwords may contain '@'

StateCallback = Callable[[str, str], None]


class CaptureError(Exception):
    """A source that can never work (missing folder or file, unsupported backend); names the path or url."""


@dataclass
class Frame:
    """One captured image and where it came from."""

    image: np.ndarray  # HxW gray or HxWx3 BGR, as captured; uint8, or uint16 from 16-bit image files
    name: str  # folder: file name; video: "<file>#<frame in file>"; live: "<kind>#<capture counter>"
    index: int  # 0-based count of frames delivered by this source
    arrival_s: float  # time.monotonic() when the frame was captured or read


@runtime_checkable
class FrameSource(Protocol):
    """What the inspector reads frames from."""

    finite: bool  # True for folder/video replay without loop

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None if none is available within timeout_s (the caller keeps going)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once a finite replay has delivered its last frame."""
        ...

    def stats(self) -> dict:
        """{"state", "dropped", "reconnects", "unreadable", "last_error"}."""
        ...

    def close(self) -> None:
        """Release the source; a live grabber thread stops promptly."""
        ...


def redact_url(url: str) -> str:
    """The url with any password replaced, safe for logs and status messages."""
    return _USERINFO_PATTERN.sub(r"\1:***@", url)


def notify(on_state: StateCallback | None, state: str, detail: str) -> None:
    """Report a state change; a faulty listener must not stop capture."""
    if on_state is None:
        return
    try:
        on_state(state, detail)
    except Exception:
        logger.exception("on_state callback failed for state %s", state)


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
