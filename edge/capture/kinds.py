"""The source kinds registered so far: what config.yaml's ``source.kind`` may name, and how each is opened.

A kind's module ends with ``KIND = register(SourceKind(config=..., opener=..., problems=...))``; the config
schema builds its ``source`` union from ``source_types()`` and follows later registrations through
``on_change``. This module imports neither the schema nor any source module (edge/capture/template.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, get_args

from edge.capture.base import CaptureError, FrameSource, StateCallback
from edge.capture.settings import SourceSettings

Problems = Callable[[Any], "list[tuple[str, str]]"]  # (source key, message) pairs; empty when it can be opened
Opener = Callable[[Any, bool, "StateCallback | None"], FrameSource]  # (config, grayscale, on_state)


def no_problems(config: SourceSettings) -> list[tuple[str, str]]:
    """Nothing to refuse up front (a camera or stream may come later: the grabber waits for it)."""
    return []


def kind_name(config: type[SourceSettings]) -> str:
    """The name a config class answers to: the one value of its ``kind: Literal[...]``."""
    values = get_args(config.model_fields["kind"].annotation)
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{config.__name__}.kind must be declared as Literal['<name>']")
    return values[0]


@dataclass(frozen=True)
class SourceKind:
    """How one kind of source is configured, checked and opened."""

    config: type[SourceSettings]  # its settings; ``kind: Literal["<name>"]`` names it
    opener: Opener  # returns a FrameSource; grayscale delivers HxW frames; may rely on problems() being empty
    problems: Problems = no_problems  # what makes it unusable on this machine (check-config reports it)

    @property
    def name(self) -> str:
        return kind_name(self.config)


_KINDS: dict[str, SourceKind] = {}
_LISTENERS: list[Callable[[], None]] = []


def register(kind: SourceKind) -> SourceKind:
    """Offer ``kind`` to config files from now on; a name already taken by another kind is refused."""
    taken = _KINDS.get(kind.name)
    if taken is not None and taken != kind:
        raise ValueError(f"source kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    _changed()
    return kind


def unregister(name: str) -> None:
    """Withdraw a kind (a test's toy kind); configs naming it are refused again."""
    if _KINDS.pop(name, None) is not None:
        _changed()


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every registration and withdrawal (the schema rebuilds its union)."""
    _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()


def kind_names() -> tuple[str, ...]:
    """The registered kinds by name: messages list them the same way whatever order they were imported in."""
    return tuple(sorted(_KINDS))


def source_types() -> tuple[type[SourceSettings], ...]:
    """The config classes of the registered kinds, by kind name."""
    return tuple(_KINDS[name].config for name in kind_names())


def source_kind(name: str) -> SourceKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise CaptureError(f"unknown source kind {name!r}; expected one of {', '.join(kind_names())}") from None
