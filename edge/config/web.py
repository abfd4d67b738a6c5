"""Config sections of the station page (`web:`) and of labelled frames for retraining (`feedback:`)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge.config.fields import FilePath, resolve

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class WebConfig(BaseModel):
    """The station page served by `lineguard run`: live view, review, threshold, feedback."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, strict=True, description="Serve the station page while the daemon runs.")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the page listens on; 127.0.0.1 keeps it on this machine until a person chooses "
        "otherwise (0.0.0.0: every interface, needs a password).",
    )
    port: int = Field(8080, ge=1, le=65535, strict=True, description="TCP port of the page.")
    public_reads: bool = Field(
        False,
        strict=True,
        description="Let anyone who reaches the page see it without the password (changes always need it "
        "when a password is required).",
    )
    require_password: Literal["non_loopback", "always"] = Field(
        "non_loopback",
        description="When changes (threshold, feedback, reload) need the password: non_loopback = when web.host "
        "is not a loopback address; always = also on loopback.",
    )
    password_file: FilePath | None = Field(
        None,
        validate_default=True,
        description="File holding the page password (first line). Default: $LINEGUARD_WEB_PASSWORD (see "
        "password_env), else $CREDENTIALS_DIRECTORY/web_password (systemd LoadCredential=). Never in this file.",
    )
    password_env: str = Field(
        "LINEGUARD_WEB_PASSWORD", min_length=1, description="Environment variable checked first for the password."
    )
    live_fps: float = Field(
        4.0, gt=0, le=30, strict=True, description="Most live-view pictures encoded per second."
    )
    recent_verdicts: int = Field(
        2000, ge=10, le=100000, strict=True,
        description="Verdicts the page keeps in memory for review and the score histogram.",
    )
    keep_serving_after_replay: bool = Field(
        False,
        strict=True,
        description="When a finite replay ends, keep the page (and commands) up until SIGTERM/Ctrl-C instead "
        "of exiting.",
    )

    @field_validator("password_file")
    @classmethod
    def _resolve_password_file(cls, value, info: ValidationInfo):
        return resolve(value, info)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def password_required(self) -> bool:
        return self.require_password == "always" or not self.loopback


class FeedbackConfig(BaseModel):
    """Frames a person labels (false reject / missed defect), saved lossless for retraining."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dir: FilePath | None = Field(
        None,
        validate_default=True,
        description="Feedback folder in the MVTec AD layout (train/good, test/<label>); null = "
        "'feedback' in storage.dir. Never touched by the evidence quota.",
    )
    keep_frames_mb: float = Field(
        32.0,
        ge=0,
        strict=True,
        description="Memory for the latest frames kept lossless so they can be labelled; 0 = no feedback.",
    )
    quota_mb: float = Field(
        500.0,
        gt=0,
        strict=True,
        description="Disk space for labelled frames: past it a new label is refused with a reason (a labelled "
        "frame is never removed by the station); storage.reserve_mb also applies.",
    )

    @field_validator("dir")
    @classmethod
    def _resolve_dir(cls, value, info: ValidationInfo):
        return resolve(value, info)
