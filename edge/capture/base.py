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

# Credentials in a source URL or GStreamer pipeline, wherever they stand in a text (a URL, a pipeline, an error
# message quoting either): the password of a URL's userinfo, greedy to the last '@' of the URL because
# passwords may contain '@' ...
_USERINFO_PATTERN = re.compile(r"(?P<keep>//[^/:@\s'\"]*:)[^\s'\"]*@")
# ... and the value of any query parameter or pipeline property whose name holds one of these words
# (password, passwd, pwd, pass, token, secret, key, auth; GStreamer's user-pw and proxy-pw): up to '&',
# whitespace or the end, or the whole quoted value.
_SECRET_NAME = r"[\w.-]*(?:pass|pwd|token|secret|key|auth|\bpw|[-_]pw)[\w.-]*"
_SECRET_VALUE_PATTERN = re.compile(
    rf"(?P<keep>(?<![\w.-]){_SECRET_NAME}=)(?:\"[^\"]*\"?|'[^']*'?|[^&\s'\"]*)", re.IGNORECASE)
REDACTED = "***"

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


def redact_url(text: str) -> str:
    """``text`` (a source URL, a GStreamer pipeline or a message quoting one) with every credential replaced.

    The one redaction for source URLs: whatever names a source in a log line, a payload or `check-config`
    output passes through here first.
    """
    text = _USERINFO_PATTERN.sub(rf"\g<keep>{REDACTED}@", text)
    return _SECRET_VALUE_PATTERN.sub(rf"\g<keep>{REDACTED}", text)


def notify(on_state: StateCallback | None, state: str, detail: str) -> None:
    """Report a state change; a faulty listener must not stop capture. The detail goes out redacted."""
    if on_state is None:
        return
    try:
        on_state(state, redact_url(detail))
    except Exception:
        logger.exception("on_state callback failed for state %s", state)


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
