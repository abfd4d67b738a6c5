"""The built-in source kinds, and opening and checking whichever kind the config names.

Importing a kind's module registers it (edge.capture.kinds); the one line per kind below is all a new kind
needs here. The config schema takes its ``source`` union from the registered kinds, so it accepts a kind
from then on. To add a kind, see edge/capture/template.py.
"""
from __future__ import annotations

from edge.capture import camera, folder, gstreamer, stream, video  # noqa: F401  each registers its kind
from edge.capture.base import CaptureError, FrameSource, StateCallback, redact_url
from edge.capture.kinds import kind_names, on_change, source_kind, source_types
from edge.capture.settings import SourceSettings

DEFAULT_KIND = folder.KIND.name  # what a source section without ``kind`` is

__all__ = ["DEFAULT_KIND", "kind_names", "on_change", "open_source", "preflight_source", "source_config",
           "source_types"]


def source_config(kind: str = DEFAULT_KIND, **values) -> SourceSettings:
    """A source section built in code (tests, tools): the settings class of ``kind``, checked as in a file.

    Raises CaptureError for a kind nobody registered and pydantic's ValidationError for a bad value.
    """
    return source_kind(kind).config(kind=kind, **values)


def preflight_source(config: SourceSettings) -> list[str]:
    """What would stop this source from opening, as "source.key: message" lines, without opening it."""
    return [f"source.{key}: {redact_url(message)}" for key, message in source_kind(config.kind).problems(config)]


def open_source(config: SourceSettings, grayscale: bool = False,
                on_state: StateCallback | None = None) -> FrameSource:
    """Open the configured source.

    Raises CaptureError at once for a source that can never work. Live sources return immediately; their first
    connection happens on the grabber thread, and ``on_state`` is called from that thread.
    """
    kind = source_kind(config.kind)
    problems = kind.problems(config)
    if problems:
        raise CaptureError(redact_url("; ".join(message for _, message in problems)))
    return kind.opener(config, grayscale, on_state)
