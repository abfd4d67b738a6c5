"""MQTT commands under <prefix>/<device>/cmd/<name>: parsed and validated before anything changes.

Parsing is pure (no side effects), so a bad command is refused with a reason and changes nothing.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.labels import DEFAULT_DEFECT, defect_problem
from edge.text import one_line

MAX_PAYLOAD_BYTES = 4096
MASK_PAYLOAD_BYTES = 48 * 1024  # cmd/mask: up to 32 polygons of 64 points
PART_ID_MAX_CHARS = 128
REASON_KEY_MAX_CHARS = 64  # an unknown key is echoed in the reason only this far
WHY_MAX_CHARS = 200  # a threshold change's reason, as the audit keeps it


class CommandRefused(ValueError):
    """A command that is not acted on; str() is the reason sent back."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    request_id: str | None = Field(default=None, max_length=64, description="echoed in the reply")


class TriggerCommand(_Command):
    part_id: str | None = Field(default=None, min_length=1, max_length=PART_ID_MAX_CHARS)


class ThresholdCommand(_Command):
    threshold: float = Field(gt=0, description="new score threshold; a part fails when score >= threshold")
    why: str | None = Field(default=None, max_length=WHY_MAX_CHARS, description="kept in the threshold audit")

    @field_validator("threshold", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, int):
            try:
                value = float(value)
            except OverflowError:  # an integer with hundreds of digits
                raise ValueError("must be a finite number") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class ReloadCommand(_Command):
    pass


class ThresholdResetCommand(_Command):
    """Back to the configured (inference.threshold) or bundle threshold: clears the stored one."""

    why: str | None = Field(default=None, max_length=WHY_MAX_CHARS, description="kept in the threshold audit")


class FeedbackCommand(_Command):
    seq: int = Field(ge=1, description="the verdict's seq, as in its result message")
    label: Literal["good", "defect"] = Field(description="good: a false reject; defect: a missed defect")
    defect: str = Field(DEFAULT_DEFECT, description="folder name under test/ for a defect (edge.labels)")

    @field_validator("defect")
    @classmethod
    def _closed_vocabulary(cls, value: str) -> str:
        problem = defect_problem(value)  # the same check as the CLI's and the feedback writer's
        if problem is not None:
            raise ValueError(problem)
        return value


class ShadowCommand(_Command):
    """A candidate bundle to score beside the live model (edge.shadow), or stop: true."""

    model: str | None = Field(default=None, min_length=1, max_length=4096, description="candidate bundle folder")
    stop: bool = Field(default=False, description="stop the shadow model")

    @model_validator(mode="after")
    def _one_of(self) -> "ShadowCommand":
        if (self.model is None) == (not self.stop):
            raise ValueError("give either model (a bundle folder) or stop: true")
        return self


class PromoteCommand(_Command):
    """The shadow model becomes the live one (edge.promotion)."""


class RollbackCommand(_Command):
    """The model before the last promote (or rollback) becomes the live one again (edge.promotion)."""


class MaskCommand(_Command):
    """Ignore polygons in frame pixels, added to the config's and stored (edge.mask_store); [] stores none."""
    polygons: list = Field(description="[[[x, y], ...], ...] in frame pixels")
    why: str | None = Field(default=None, max_length=WHY_MAX_CHARS, description="kept in the audit")

    @field_validator("polygons", mode="before")
    @classmethod
    def _polygons(cls, value: Any) -> Any:
        from edge.mask_store import check_polygons

        return check_polygons(value)


class MaskResetCommand(_Command):
    """Remove the stored mask: back to the config's ignore polygons only."""
    why: str | None = Field(default=None, max_length=WHY_MAX_CHARS, description="kept in the audit")


COMMANDS: dict[str, type[_Command]] = {
    "mask": MaskCommand,
    "mask_reset": MaskResetCommand,
    "trigger": TriggerCommand,
    "threshold": ThresholdCommand,
    "reload": ReloadCommand,
    "threshold_reset": ThresholdResetCommand,
    "feedback": FeedbackCommand,
    "shadow": ShadowCommand,
    "promote": PromoteCommand,
    "rollback": RollbackCommand,
}


@dataclass(frozen=True)
class Command:
    name: str
    args: _Command
    origin: str = "mqtt"  # who sent it, for the threshold audit: "mqtt", "page <address>", "cli", "opcua"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p)[:REASON_KEY_MAX_CHARS] for p in error["loc"]) or "payload"
    return f"{where}: {error['msg']}"


def parse_command(name: str, payload: bytes) -> Command:
    """Validate a command; raises CommandRefused with a one-line reason."""
    try:
        return _parse(name, payload)
    except CommandRefused as exc:
        raise CommandRefused(one_line(str(exc)) or "refused") from None


def _parse(name: str, payload: bytes) -> Command:
    if name not in COMMANDS:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."  # escapes can make a name long
        raise CommandRefused(f"unknown command {shown}; known: {', '.join(sorted(COMMANDS))}")
    limit = MASK_PAYLOAD_BYTES if name == "mask" else MAX_PAYLOAD_BYTES
    if len(payload) > limit:
        raise CommandRefused(f"payload of {len(payload)} bytes exceeds {limit}")
    try:
        data = json.loads(payload.decode("utf-8")) if payload.strip() else {}
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, too many digits
        raise CommandRefused(f"payload is not JSON: {str(exc)[:100]}") from None
    if name == "threshold" and isinstance(data, (int, float)) and not isinstance(data, bool):
        data = {"threshold": data}  # a bare number, as a dashboard slider sends it
    if not isinstance(data, dict):
        raise CommandRefused("payload must be a JSON object" + (" or a number" if name == "threshold" else ""))
    try:
        return Command(name, COMMANDS[name].model_validate(data))
    except ValidationError as exc:
        raise CommandRefused(_first_error(exc)) from None


def request_id_of(payload: bytes) -> str | None:
    """Best-effort request_id of a refused command, so the sender can match the reply."""
    try:
        data = json.loads(payload[:MASK_PAYLOAD_BYTES])
    except (ValueError, RecursionError):
        return None
    value = data.get("request_id") if isinstance(data, dict) else None
    return value[:64] if isinstance(value, str) else None
