"""Typed configuration for the lineguard edge daemon: one pydantic model per section of config.yaml.

The parts of the daemon take these sections as they are (no copies into settings classes of their own),
so each check is written here once. Reading the YAML file and wording errors is edge.config.load's job.

Relative paths in the file are resolved against the directory that holds the file, so the daemon behaves
the same whatever its working directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edge.capture.registry import DEFAULT_KIND, on_change, source_types
from edge.config.broker import MqttConfig
from edge.config.fields import FilePath, base_dir, not_below, resolve
from edge.config.history import HistoryConfig
from edge.config.integrations import HomeAssistantConfig, MetricsConfig, SparkplugConfig
from edge.config.io import IoConfig
from edge.config.opcua import OpcuaConfig
from edge.config.watch import DriftConfig, ShadowConfig
from edge.config.web import FeedbackConfig, WebConfig

# The source section: the config class of the kind it names (edge.capture.registry), each with only its own
# settings. Rebuilt when a kind registers later (_use_registered_kinds).
SourceSection = Annotated[Union[source_types()], Field(discriminator="kind")]


class TriggerConfig(BaseModel):
    """When a frame is inspected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: Literal["continuous", "triggered", "mqtt"] = Field(
        "continuous",
        description="continuous: inspect at source.fps; triggered: inspect one frame per trigger (cmd/trigger, "
        "the Modbus trigger coil, the GPIO trigger pin); mqtt: the older name of triggered.",
    )
    timeout_s: float = Field(
        5.0, gt=0, strict=True,
        description="How long a trigger waits for a frame, in seconds, counted from trigger time + delay_ms.",
    )
    delay_ms: float = Field(
        0.0, ge=0, le=60000, strict=True,
        description="A trigger inspects the first frame captured at least this long after it (the part "
        "reaching the camera), in milliseconds; never an older buffered frame.",
    )


_RoiOffset = Annotated[int, Field(ge=0, strict=True)]
_RoiSize = Annotated[int, Field(gt=0, strict=True)]


class InferenceConfig(BaseModel):
    """How frames are scored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    threads: int = Field(2, ge=1, le=16, strict=True, description="LiteRT interpreter threads.")
    roi: tuple[_RoiOffset, _RoiOffset, _RoiSize, _RoiSize] | None = Field(
        None,
        description="[x, y, w, h] crop applied to each captured frame before the model's "
        "own preprocessing; null = whole frame.",
    )
    ignore_mask: FilePath | None = Field(
        None,
        validate_default=True,
        description="Image file covering the whole captured frame; non-zero pixels are ignored in scoring "
        "(added to the bundle's own ignore mask).",
    )
    ignore_polygons: list[list[tuple[float, float]]] = Field(
        [],  # pydantic copies mutable defaults per instance
        description="Polygons ignored in scoring, each a list of [x, y] points in captured-frame pixels "
        "(added to the bundle's own).",
    )
    quality_gate: bool = Field(
        True,
        strict=True,
        description="Give blurred, over- or under-exposed and blank frames the verdict 'unscorable' "
        "instead of scoring them (limits learned from the training images, shipped in the bundle).",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        strict=True,
        description="Anomaly score threshold; overrides the bundle's calibrated threshold.",
    )
    min_region_px: int = Field(
        4,
        ge=1,
        strict=True,
        description="Smallest anomalous region reported, in model-input pixels.",
    )

    @field_validator("ignore_mask")
    @classmethod
    def _resolve_mask(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve(value, info)

    @field_validator("ignore_polygons")
    @classmethod
    def _check_polygons(cls, value: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        if any(len(polygon) < 3 for polygon in value):
            raise ValueError("each polygon needs at least 3 [x, y] points")
        return value


class AlertsConfig(BaseModel):
    """When a failing frame becomes an alert."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    debounce_n: int = Field(
        1, ge=1, strict=True, description="Alert when n of the last m frames fail: this is n."
    )
    debounce_m: int = Field(
        1,
        ge=1,
        strict=True,
        validate_default=True,
        description="Alert when n of the last m frames fail: this is m (n <= m).",
    )

    @field_validator("debounce_m")
    @classmethod
    def _check_window(cls, value: int, info: ValidationInfo) -> int:
        return not_below(value, info, "alerts", "debounce_n")


class StorageConfig(BaseModel):
    """Local state: outbox of unsent messages and evidence images."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dir: FilePath | None = Field(
        None,
        validate_default=True,
        description="State directory; null = $STATE_DIRECTORY (systemd StateDirectory=) "
        "if set, else 'state' next to the config file.",
    )
    outbox_max_messages: int = Field(
        100000, ge=10, strict=True, description="Most messages kept while the broker is unreachable."
    )
    outbox_when_full: Literal["drop_oldest", "reject_new"] = Field(
        "drop_oldest", description="What to do when the outbox is full."
    )
    sync: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite synchronous mode; full survives power loss at a cost in speed.",
    )
    evidence: Literal["never", "fail", "always"] = Field(
        "fail", description="Which frames to save as evidence images."
    )
    evidence_quota_mb: float = Field(
        500.0, gt=0, strict=True, description="Disk space for evidence images; oldest are deleted first."
    )
    reserve_mb: float = Field(
        200.0,
        ge=0,
        strict=True,
        description="Free space on storage.dir's file system kept for the outbox: evidence and feedback files "
        "that would go below it are refused (verdicts continue) until space is back. Older name: "
        "evidence_reserve_mb.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        strict=True,
        description="At the end of a finite replay, how long to wait for pending messages to be delivered.",
    )

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        # evidence_reserve_mb became reserve_mb when feedback came to share the reserve: old files still load.
        if isinstance(data, dict) and "evidence_reserve_mb" in data:
            if "reserve_mb" in data:
                raise ValueError("evidence_reserve_mb is the older name of reserve_mb: keep only reserve_mb")
            data = {("reserve_mb" if k == "evidence_reserve_mb" else k): v for k, v in data.items()}
        return data

    @field_validator("dir")
    @classmethod
    def _resolve_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            return resolve(value, info)
        # systemd passes a colon-separated list when several StateDirectory= are set.
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(state) if state else base_dir(info) / "state"


class Config(BaseModel):
    """Complete daemon configuration."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device_id: str = Field(
        "station-1",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Name of this station, used in MQTT topics: letters, digits, '_', '.', '-'.",
    )
    model: FilePath = Field(
        Path("models/mnist-1"), validate_default=True, description="Model bundle folder."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log messages written."
    )
    source: SourceSection = Field(default_factory=dict, validate_default=True,
                                  description="Frame source: the keys of the kind that source.kind names.")
    trigger: TriggerConfig = Field(default_factory=TriggerConfig, description="Inspection trigger.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Scoring.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Alert debouncing.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT publishing.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Local state.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics.")
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig,
                                               description="Home Assistant MQTT discovery.")
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig, description="Sparkplug B edge node.")
    io: IoConfig = Field(default_factory=IoConfig, description="Plant IO: GPIO lines and Modbus TCP.")
    opcua: OpcuaConfig = Field(default_factory=OpcuaConfig, description="OPC UA server for SCADA and MES.")
    web: WebConfig = Field(default_factory=WebConfig, description="Station page.")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="Labelled frames for retraining.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift watch.")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig, description="Shadow model.")
    history: HistoryConfig = Field(default_factory=HistoryConfig, description="Verdict history.")

    @field_validator("source", mode="before")
    @classmethod
    def _default_kind(cls, value: Any) -> Any:
        # A source section without a kind (or an empty one) is the default kind's.
        if value is None:
            return {"kind": DEFAULT_KIND}
        if isinstance(value, dict) and "kind" not in value:
            return {"kind": DEFAULT_KIND, **value}
        return value

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve(value, info)

    @field_validator("homeassistant", "sparkplug")
    @classmethod
    def _needs_mqtt(cls, value: HomeAssistantConfig | SparkplugConfig, info: ValidationInfo):
        mqtt = info.data.get("mqtt")
        if value.enabled and mqtt is not None and not mqtt.enabled:
            how = "discovery goes" if info.field_name == "homeassistant" else "the edge node publishes"
            raise ValueError(f"enabled needs mqtt.enabled: {how} through the broker")
        return value

    @property
    def feedback_dir(self) -> Path:
        """feedback.dir, or 'feedback' in storage.dir when unset."""
        return self.feedback.dir or self.storage.dir / "feedback"

    @property
    def mqtt_nodelay(self) -> bool:
        """mqtt.tcp_nodelay, or when null: on in trigger mode, where replies matter, off in continuous mode."""
        return self.mqtt.tcp_nodelay if self.mqtt.tcp_nodelay is not None else self.trigger.mode != "continuous"

    @property
    def sparkplug_node_id(self) -> str:
        """sparkplug.edge_node_id, or the device_id when unset."""
        return self.sparkplug.edge_node_id or self.device_id

    @property
    def mqtt_client_id(self) -> str:
        """The broker client id: mqtt.client_id, or 'lineguard-<device_id>' when unset."""
        return self.mqtt.client_id or f"lineguard-{self.device_id}"


def _use_registered_kinds() -> None:
    """A kind registered after this module was imported (a plug-in, a test's toy kind) is accepted from now on."""
    Config.model_fields["source"].annotation = Union[source_types()]
    Config.model_rebuild(force=True)


on_change(_use_registered_kinds)


def json_schema() -> dict:
    """JSON Schema of the config file, with descriptions, for editor completion."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lineguard configuration"
    return schema
