"""The ``metrics``, ``homeassistant`` and ``sparkplug`` sections: how the station plugs into a plant's monitoring."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.config.fields import check_mqtt_string, check_topic_prefix

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
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, strict=True,
        description="Time a client has to send its request; then it is closed (a scraper sends at once).",
    )
    max_connections: int = Field(
        8, ge=1, le=1000, strict=True,
        description="Connections to metrics.port at once; a new one beyond it replaces the oldest that has sent "
        "no request, or is closed.",
    )


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


SPARKPLUG_FORBIDDEN = ("+", "#", "/")  # Sparkplug B 3.0: the ids are topic levels, so no wildcard and no '/'


def check_sparkplug_id(value: str) -> str:
    """A Sparkplug group, edge node or device id: one topic level of valid UTF-8 without '+', '#' or '/'."""
    bad = [char for char in SPARKPLUG_FORBIDDEN if char in value]
    if bad:
        raise ValueError(f"must not contain {' or '.join(repr(char) for char in bad)}: a Sparkplug id is one "
                         "topic level")
    return check_mqtt_string(value)


class SparkplugConfig(BaseModel):
    """A Sparkplug B edge node: births, one DDATA per verdict (from the durable outbox) and death certificates."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        False, strict=True,
        description="Be a Sparkplug B edge node on the same broker, over a second connection (needs mqtt.enabled).",
    )
    group_id: str = Field("lineguard", min_length=1, description="Sparkplug group id: no '+', '#' or '/'.")
    edge_node_id: str | None = Field(
        None, min_length=1, description="Sparkplug edge node id; null = the device_id. No '+', '#' or '/'.")
    device_id: str = Field(
        "camera", min_length=1, description="Sparkplug device id of the camera under the node: no '+', '#' or '/'.")
    data_qos: int = Field(
        1, ge=0, le=1, strict=True,
        description="QoS of DDATA: 1 (default) keeps each verdict in the outbox until the broker acknowledges it; "
        "0 is what Sparkplug B prescribes, and a verdict sent just before the link drops may be lost.",
    )

    @field_validator("group_id", "edge_node_id", "device_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        return value if value is None else check_sparkplug_id(value)
