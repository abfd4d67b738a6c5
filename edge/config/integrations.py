"""The ``metrics`` and ``homeassistant`` sections: how the station plugs into a plant's monitoring."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.config.fields import check_topic_prefix

DEFAULT_METRICS_PORT = 9468


class MetricsConfig(BaseModel):
    """Prometheus metrics over HTTP (GET /metrics)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, strict=True, description="Serve Prometheus metrics at http://host:port/metrics.")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on; 127.0.0.1 keeps it on the device, 0.0.0.0 lets a Prometheus server "
        "elsewhere scrape it.",
    )
    port: int = Field(DEFAULT_METRICS_PORT, ge=1, le=65535, strict=True, description="TCP port to listen on.")


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery: the station appears in Home Assistant as one device, by itself."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        False, strict=True,
        description="Publish retained discovery config messages for Home Assistant (needs mqtt.enabled).",
    )
    discovery_prefix: str = Field(
        "homeassistant",
        min_length=1,
        description="Home Assistant's MQTT discovery prefix (its default is 'homeassistant').",
    )

    @field_validator("discovery_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return check_topic_prefix(value)
