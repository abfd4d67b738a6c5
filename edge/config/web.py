"""Config sections of the station page (`web:`) and of labelled frames for retraining (`feedback:`)."""
from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge.config.fields import FilePath, resolve

WILDCARD_HOSTS = ("0.0.0.0", "::")
# RFC 1123 labels; a numeric last label is refused, so "127.1" cannot pass for a name.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"^(?:{_LABEL}\.)*(?![0-9]+$){_LABEL}$")


def ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host name spells as a literal (IPv6 with or without brackets), or None for a DNS name."""
    try:
        return ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
    except ValueError:
        return None


def _host_name(value: str) -> str:
    name = value.lower()
    if ip_literal(name) is None and (len(name) > 253 or not _HOST_NAME.match(name)):
        raise ValueError(f"{value!r} is not a host name (a DNS name or an IP address, without port or scheme)")
    return name


HostName = Annotated[str, AfterValidator(_host_name)]


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
    allowed_hosts: list[HostName] = Field(
        [],
        max_length=64,
        description="Host names the page answers to besides loopback addresses, `localhost` and web.host "
        "(e.g. the name a reverse proxy or the plant's DNS gives the device). Any other Host header is refused "
        "(421), so a web site cannot reach the page through DNS rebinding.",
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, strict=True,
        description="Time a client has to send a request's headers, and again its body; then it is closed.",
    )
    max_live_viewers: int = Field(
        10, ge=1, le=1000, strict=True, description="Live views open at once; more get 503."
    )
    max_connections: int = Field(
        64, ge=2, le=10000, strict=True,
        description="Connections to the page at once, live views included (so more than web.max_live_viewers); "
        "a new one beyond it replaces the oldest that has sent no request, or is closed.",
    )
    keep_serving_after_replay: bool = Field(
        False,
        strict=True,
        description="When a finite replay ends, keep the page (and commands) up until SIGTERM/Ctrl-C instead "
        "of exiting.",
    )

    @field_validator("max_connections")
    @classmethod
    def _room_beside_viewers(cls, value: int, info: ValidationInfo) -> int:
        viewers = info.data.get("max_live_viewers")
        if viewers is not None and value <= viewers:
            raise ValueError(f"must be > web.max_live_viewers ({viewers}), got {value}: viewers would leave "
                             "no room for the page's other requests")
        return value

    @field_validator("password_file")
    @classmethod
    def _resolve_password_file(cls, value, info: ValidationInfo):
        return resolve(value, info)

    @property
    def loopback(self) -> bool:
        address = ip_literal(self.host)
        return self.host.lower() == "localhost" or (address is not None and address.is_loopback)

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
