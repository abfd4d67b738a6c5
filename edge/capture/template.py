"""A minimal source kind, to copy when adding one: ``still`` delivers one image file as a frame.

It is not registered, so config.yaml does not offer it; tests/test_capture.py runs it, and
tests/test_templates_source.py registers a kind built the same way and runs the daemon on it. To add a kind:

1. Copy this file to edge/capture/<kind>.py. It holds everything of the kind:
   - its settings: a pydantic class extending SourceSettings, ReplaySettings (path, loop) or LiveSettings
     (reconnect_*, read_timeout_s) from edge/capture/settings.py, whose ``kind: Literal["<kind>"]`` names it.
     Its own keys go here only, each with a description: config.yaml's ``source`` section is checked against
     the class its ``kind`` names, with line numbers, and a key of another kind is refused as unknown.
   - ``problems(config)``: what makes the source unusable on this machine, as (source key, message) pairs.
     `lineguard check-config` reports them as "source.<key>: <message>"; opening refuses them with a
     CaptureError, so the opener can rely on them being absent. Leave it out when nothing can be checked.
   - ``open(config, grayscale, on_state)``: returns a FrameSource (edge/capture/base.py). Subclass ReplaySource
     for files replayed at source.fps (implement _next_image), or hand LiveSource a function that opens a
     cv2.VideoCapture for anything live (it reconnects with backoff on its own). Decode image files with
     edge.core.preprocess.read_image, as `lineguard score` does, so both give the same model input.
   - last line: ``KIND = register(SourceKind(config=..., opener=..., problems=...))`` (edge/capture/kinds.py).
2. Add the module to the import line of edge/capture/registry.py. Importing it registers the kind; the config
   schema accepts it from then on.
3. Describe the kind and its keys in README.md and config.yaml, and test it in tests/test_capture.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edge.capture.base import CaptureError, StateCallback
from edge.capture.kinds import SourceKind
from edge.capture.replay import ReplaySource
from edge.capture.settings import ReplaySettings
from edge.core.preprocess import ImageError, read_image


class StillConfig(ReplaySettings):
    """source.kind still: source.path is one image file."""

    kind: Literal["still"] = Field("still", description="One image file (source.path) as a frame.")


def still_problems(config: StillConfig) -> list[tuple[str, str]]:
    if not Path(config.path).is_file():
        return [("path", f"image file not found: {config.path}")]
    return []


def open_still(config: StillConfig, grayscale: bool, on_state: StateCallback | None) -> StillSource:
    return StillSource(config, grayscale, on_state)


class StillSource(ReplaySource):
    """One image file as a frame: once, or at source.fps for ever with source.loop."""

    def __init__(self, config: StillConfig, grayscale: bool = False, on_state: StateCallback | None = None) -> None:
        super().__init__(config, grayscale, on_state)
        try:
            self._image = read_image(config.path, "gray" if grayscale else "bgr")
        except ImageError as exc:
            raise CaptureError(str(exc)) from None
        self._name = Path(config.path).name
        self._delivered_once = False

    def _next_image(self) -> tuple[np.ndarray, str] | None:
        if self._delivered_once and not self._config.loop:
            return None
        self._delivered_once = True
        return self._image, self._name


# Not registered: a real kind's module wraps this in register(...) (edge.capture.kinds).
KIND = SourceKind(config=StillConfig, opener=open_still, problems=still_problems)
