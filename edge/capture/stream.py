"""Kind ``stream``: an RTSP or HTTP stream opened through FFmpeg, read by the grabber of edge.capture.live."""
from __future__ import annotations

import re
from typing import Literal

import cv2
from pydantic import Field

from edge.capture.base import StateCallback
from edge.capture.kinds import SourceKind, register
from edge.capture.live import LiveSource, capture_timeouts
from edge.capture.settings import UrlSettings

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StreamConfig(UrlSettings):
    """source.kind stream: source.url names the stream."""

    kind: Literal["stream"] = Field("stream", description="An RTSP/HTTP stream (source.url).")
    url: str | None = Field(None, min_length=1, validate_default=True,
                            description="RTSP/HTTP URL of the stream (required).")

    @classmethod
    def check_url(cls, url: str) -> None:
        check_stream_url(url)


def check_stream_url(url: str) -> None:
    if not _URL_SCHEME.match(url):
        raise ValueError("must be a URL such as rtsp://camera.local/stream")


def open_stream(config: StreamConfig, grayscale: bool, on_state: StateCallback | None) -> LiveSource:
    timeouts = capture_timeouts(config)
    return LiveSource(config, lambda: cv2.VideoCapture(config.url, cv2.CAP_FFMPEG, timeouts), grayscale, on_state)


KIND = register(SourceKind(config=StreamConfig, opener=open_stream))  # a stream may come later: no problems
