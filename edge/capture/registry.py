"""The source kinds: one list that config.yaml's ``source.kind``, opening a source and `check-config` all use.

Each kind names the config key it requires, how to check that key's value (in the schema, with a line number),
what would make it unusable on this machine (preflight: `check-config` reports it, opening refuses it) and how
to open it. To add a kind, see edge/capture/template.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edge.capture import folder, live, video
from edge.capture.base import CaptureError, FrameSource, StateCallback, redact_url

if TYPE_CHECKING:
    from edge.config.schema import SourceConfig

Problems = Callable[["SourceConfig"], list[tuple[str, str]]]  # (source key, message) pairs
Opener = Callable[["SourceConfig", bool, "StateCallback | None"], FrameSource]


@dataclass(frozen=True)
class SourceKind:
    """How one kind of source is configured, checked and opened."""

    name: str
    requires: str | None  # the source key this kind cannot do without: "path", "url" or None
    problems: Problems  # what makes it unusable here; empty when it can be opened
    open: Opener  # (config, grayscale, on_state) -> FrameSource; grayscale delivers HxW frames
    check_url: Callable[[str], None] | None = None  # raises ValueError for a url it can never use


KINDS = (
    SourceKind("folder", "path", folder.folder_problems, folder.open_folder),
    SourceKind("video", "path", video.video_problems, video.open_video),
    SourceKind("camera", None, live.no_problems, live.open_camera),
    SourceKind("stream", "url", live.no_problems, live.open_stream, live.check_stream_url),
    SourceKind("gstreamer", "url", live.gstreamer_problems, live.open_gstreamer, live.check_pipeline),
)
_BY_NAME = {kind.name: kind for kind in KINDS}
SOURCE_KINDS = tuple(_BY_NAME)


def source_kind(name: str) -> SourceKind:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CaptureError(f"unknown source kind {name!r}; expected one of {', '.join(SOURCE_KINDS)}") from None


def required_key(kind: str | None) -> str | None:
    """The source key ``kind`` requires; None for a kind that needs neither, or is not a kind at all."""
    return _BY_NAME[kind].requires if kind in _BY_NAME else None


def check_url(kind: str, value: str) -> None:
    """Raise ValueError, worded for the config file, for a url or pipeline this kind can never use."""
    check = source_kind(kind).check_url
    if check is not None:
        check(value)


def preflight_source(config: SourceConfig) -> list[str]:
    """What would stop this source from opening, as "source.key: message" lines, without opening it."""
    return [f"source.{key}: {redact_url(message)}" for key, message in source_kind(config.kind).problems(config)]


def open_source(config: SourceConfig, grayscale: bool = False, on_state: StateCallback | None = None) -> FrameSource:
    """Open the configured source.

    Raises CaptureError at once for a source that can never work. Live sources return immediately; their first
    connection happens on the grabber thread, and ``on_state`` is called from that thread.
    """
    kind = source_kind(config.kind)
    problems = kind.problems(config)
    if problems:
        raise CaptureError(redact_url("; ".join(message for _, message in problems)))
    return kind.open(config, grayscale, on_state)
