"""Kind ``gstreamer``: a GStreamer pipeline ending in appsink (e.g. libcamera), read by edge.capture.live."""
from __future__ import annotations

import re
from typing import Literal

import cv2
from pydantic import Field

from edge.capture.base import StateCallback, redact_url
from edge.capture.kinds import SourceKind, register
from edge.capture.live import LiveSource, capture_timeouts
from edge.capture.settings import UrlSettings


class GstreamerConfig(UrlSettings):
    """source.kind gstreamer: source.url holds the pipeline."""

    kind: Literal["gstreamer"] = Field("gstreamer", description="A GStreamer pipeline (source.url).")
    url: str | None = Field(None, min_length=1, validate_default=True,
                            description="GStreamer pipeline string ending in appsink (required).")

    @classmethod
    def check_url(cls, url: str) -> None:
        check_pipeline(url)


def check_pipeline(pipeline: str) -> None:
    # OpenCV can only pull frames out of a pipeline whose last element is appsink.
    if not pipeline.rsplit("!", 1)[-1].strip().startswith("appsink"):
        raise ValueError("a GStreamer pipeline must end in an appsink element")


def gstreamer_available() -> bool:
    """Whether this OpenCV build includes the GStreamer video backend."""
    match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    return bool(match) and match.group(1).upper() != "NO"


def gstreamer_problems(config: GstreamerConfig) -> list[tuple[str, str]]:
    """Why this pipeline cannot run here, as (key, message) pairs."""
    if gstreamer_available():
        return []
    return [("kind", f"gstreamer source {redact_url(config.url)!r}: this OpenCV build has no GStreamer support "
             "(cv2.getBuildInformation() shows 'GStreamer: NO', as in the pip opencv-python wheels); "
             "use Raspberry Pi OS's python3-opencv package (apt install python3-opencv), which is built with it "
             "(a venv sees it only with --system-site-packages)")]


def open_gstreamer(config: GstreamerConfig, grayscale: bool, on_state: StateCallback | None) -> LiveSource:
    timeouts = capture_timeouts(config)
    return LiveSource(config, lambda: cv2.VideoCapture(config.url, cv2.CAP_GSTREAMER, timeouts), grayscale,
                      on_state)


KIND = register(SourceKind(config=GstreamerConfig, opener=open_gstreamer, problems=gstreamer_problems))
