"""A minimal source kind, to copy when adding one: ``still`` delivers one image file as a frame.

It is not registered, so config.yaml does not offer it; tests/test_capture.py runs it. To add a kind:

1. Write a module in edge/capture/ with two functions, as below:
   - ``problems(config)``: what makes the source unusable on this machine, as (source key, message) pairs.
     `lineguard check-config` reports them as "source.<key>: <message>"; opening refuses them with a
     CaptureError, so the open function can rely on them being absent.
   - ``open(config, grayscale, on_state)``: returns a FrameSource (edge/capture/base.py). Subclass ReplaySource
     for files replayed at source.fps (implement _next_image), or hand LiveSource a function that opens a
     cv2.VideoCapture for anything live (it reconnects with backoff on its own). Decode image files with
     edge.core.preprocess.read_image, as `lineguard score` does, so both give the same model input.
2. Add a SourceKind line to KINDS in edge/capture/registry.py. The config schema accepts the kind from then
   on; ``requires`` makes source.path or source.url mandatory for it, ``check_url`` checks that url's form.
3. A new setting goes into SourceConfig (edge/config/schema.py, with a description) and config.yaml.
4. Describe the kind in README.md and test it in tests/test_capture.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.capture.base import CaptureError, StateCallback
from edge.capture.replay import ReplaySource
from edge.core.preprocess import ImageError, read_image

if TYPE_CHECKING:
    from edge.config.schema import SourceConfig


def still_problems(config: SourceConfig) -> list[tuple[str, str]]:
    if not Path(config.path).is_file():
        return [("path", f"image file not found: {config.path}")]
    return []


def open_still(config: SourceConfig, grayscale: bool, on_state: StateCallback | None) -> StillSource:
    return StillSource(config, grayscale, on_state)


class StillSource(ReplaySource):
    """One image file as a frame: once, or at source.fps for ever with source.loop."""

    def __init__(self, config: SourceConfig, grayscale: bool = False, on_state: StateCallback | None = None) -> None:
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
