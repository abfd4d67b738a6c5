"""The settings source kinds share, as the pydantic bases a kind's own config class extends.

A kind's class (in its own module) narrows ``kind`` to ``Literal["<name>"]`` and adds only its own settings;
config.yaml's ``source`` section is validated against the class its ``kind`` names, so a key of another kind
is an unknown key there. Relative paths resolve against the config file's folder, as elsewhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge.capture.base import redact_url
from edge.config.fields import FilePath, not_below, resolve


class SourceSettings(BaseModel):
    """What every kind has: its name and the inspection rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: str = Field(description="Frame source kind.")  # each kind narrows it to Literal["<name>"]
    fps: float = Field(
        10.0, ge=0, le=1000, strict=True,
        description="Continuous inspection rate in frames per second; 0 = as fast as frames come.",
    )


class ReplaySettings(SourceSettings):
    """A file or folder replayed at fps, once or in a loop."""

    path: FilePath | None = Field(
        None, validate_default=True, description="The folder or file frames are read from (required)."
    )
    loop: bool = Field(False, strict=True, description="Restart the replay at the end instead of exiting.")

    @field_validator("path")
    @classmethod
    def _require_path(cls, value: Path | None, info: ValidationInfo) -> Path:
        if value is None:
            raise ValueError(f"is required when source.kind is '{info.data.get('kind')}'")
        return resolve(value, info)


class LiveSettings(SourceSettings):
    """A device or server read by a grabber thread that reopens it with backoff (edge.capture.live)."""

    reconnect_initial_s: float = Field(
        1.0, gt=0, strict=True, description="First delay before reopening a failed live source."
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, strict=True, validate_default=True,
        description="Longest delay between reopen attempts (backoff doubles up to this).",
    )
    read_timeout_s: float = Field(
        5.0, gt=0, strict=True,
        description="A live source with no frame for this long counts as stalled and is reopened.",
    )

    @field_validator("reconnect_max_s")
    @classmethod
    def _check_reconnect(cls, value: float, info: ValidationInfo) -> float:
        return not_below(value, info, "source", "reconnect_initial_s")

    def label(self) -> str:
        """How log lines and the state detail name this source (credentials redacted)."""
        return self.kind


class UrlSettings(LiveSettings):
    """A live source named by a URL or pipeline string; ``url_hint`` says what form a kind needs."""

    url_hint: ClassVar[str] = "a URL"
    url: str | None = Field(None, min_length=1, validate_default=True, description="Where frames come from.")

    @field_validator("url")
    @classmethod
    def _require_url(cls, value: str | None, info: ValidationInfo) -> str:
        if value is None:
            raise ValueError(f"is required when source.kind is '{info.data.get('kind')}'")
        cls.check_url(value)
        return value

    @classmethod
    def check_url(cls, url: str) -> None:
        """Raise ValueError, worded for the config file, for a url this kind can never use."""

    def label(self) -> str:
        return f"{self.kind} {redact_url(self.url or '')}"
