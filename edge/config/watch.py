"""The ``drift`` and ``shadow`` sections: watching the running model, and a candidate beside it."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge.config.fields import FilePath, resolve


class DriftConfig(BaseModel):
    """The drift watch (edge.drift): passed parts' scores and the frames' brightness, contrast and sharpness
    against the bundle's reference, each a one-sided CUSUM of normal scores (README, "Drift watch")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, strict=True, description="Watch for drift; `drift` in stats, /metrics and alerts.")
    limit: float = Field(
        12.0, ge=2, le=100, strict=True,
        description="CUSUM decision limit h, in standard deviations: 12 with allowance 0.5 gives an in-control "
        "run of about 1.5 million frames per signal (over 200,000 for the whole watch).",
    )
    allowance: float = Field(
        0.5, gt=0, le=3, strict=True,
        description="CUSUM allowance k, in standard deviations: half the smallest shift worth finding quickly.",
    )
    window: int = Field(
        500, ge=10, le=100000, strict=True,
        description="Frames the recent mean of each signal covers, in stats and on the page.",
    )
    baseline_frames: int = Field(
        200, ge=20, le=100000, strict=True,
        description="A bundle without a reference for a signal (older bundles) learns one from this many "
        "frames at the station first.",
    )


class ShadowConfig(BaseModel):
    """A candidate bundle scoring beside the live one (edge.shadow): compared, never published."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: FilePath | None = Field(
        None, description="Candidate bundle folder scored on every frame the live model scores; null = none.",
    )

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve(value, info)
