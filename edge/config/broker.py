"""The ``mqtt`` section: how to reach and authenticate with the broker that receives verdicts.

The password is never part of the config (see edge.config.secrets); only where to find it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edge.config.fields import FilePath, check_mqtt_string, check_topic_prefix, not_below, resolve

class TlsConfig(BaseModel):
    """TLS towards the MQTT broker."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, strict=True, description="Connect to the broker over TLS.")
    ca_file: FilePath | None = Field(
        None,
        validate_default=True,
        description="CA certificate (PEM) that signed the broker's certificate; null = system CAs.",
    )
    cert_file: FilePath | None = Field(
        None,
        validate_default=True,
        description="Client certificate (PEM) for mutual TLS; goes with key_file.",
    )
    key_file: FilePath | None = Field(
        None,
        validate_default=True,
        description="Client private key (PEM) for mutual TLS; goes with cert_file.",
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _resolve_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = resolve(value, info)
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")  # found here, not as a crash at connect time
        return path

    @model_validator(mode="before")
    @classmethod
    def _check_pair(cls, data: Any) -> Any:
        # Before the fields: a lone cert_file is one mistake, not also a missing-file error.
        if isinstance(data, dict) and (data.get("cert_file") is None) != (data.get("key_file") is None):
            raise ValueError("cert_file and key_file must be given together")
        return data


class MqttConfig(BaseModel):
    """Connection to the MQTT broker that receives verdicts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, strict=True, description="Publish verdicts over MQTT.")
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or IP address.")
    port: int = Field(1883, ge=1, le=65535, strict=True, description="Broker TCP port.")
    topic_prefix: str = Field(
        "lineguard",
        min_length=1,
        description="First topic level(s); no '+' or '#', no leading or trailing '/'.",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        description="MQTT client id; null = 'lineguard-<device_id>'.",
    )
    username: str | None = Field(
        None, min_length=1, description="Broker user name; null = anonymous."
    )
    password_env: str = Field(
        "LINEGUARD_MQTT_PASSWORD",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the broker password.",
    )
    password_file: FilePath | None = Field(
        None,
        validate_default=True,
        description="File holding the broker password (used when the environment variable is unset).",
    )
    keepalive_s: int = Field(
        30, ge=5, le=3600, strict=True, description="MQTT keepalive interval in seconds."
    )
    max_inflight: int = Field(
        256, ge=1, le=65535, strict=True, description="Most QoS 1 messages awaiting acknowledgement."
    )
    reconnect_min_s: float = Field(
        1.0, gt=0, strict=True, description="First delay before reconnecting to the broker."
    )
    reconnect_max_s: float = Field(
        30.0,
        gt=0,
        strict=True,
        validate_default=True,
        description="Longest delay between reconnect attempts.",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT protocol version: 5 tags each heatmap with its result's id and seq (user properties); "
        "3.1.1 for brokers that do not speak 5. Subscribers may use either.",
    )
    tcp_nodelay: bool | None = Field(
        None,
        description="Send each packet at once (TCP_NODELAY): about 10 ms off every command reply, at about 15 % "
        "of the verdicts a second the link can carry. null = on when trigger.mode is triggered (replies "
        "matter), off in continuous mode (throughput matters). Takes effect at the next start.",
    )
    heatmap: Literal["never", "fail", "always"] = Field(
        "fail", description="When to publish the JPEG heatmap overlay."
    )
    stats_interval_s: float = Field(
        10.0, gt=0, strict=True, description="How often to publish statistics, in seconds."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return check_topic_prefix(value)

    @field_validator("client_id", "username")
    @classmethod
    def _check_broker_string(cls, value: str | None) -> str | None:
        return value if value is None else check_mqtt_string(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        # paho's network thread dies on a name it cannot encode, leaving MQTT silently dead.
        try:
            value.encode("idna")
        except UnicodeError:
            raise ValueError(f"{value!r} is not a valid host name or IP address") from None
        return value

    @field_validator("password_file")
    @classmethod
    def _resolve_password_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve(value, info)

    @field_validator("reconnect_max_s")
    @classmethod
    def _check_reconnect(cls, value: float, info: ValidationInfo) -> float:
        return not_below(value, info, "mqtt", "reconnect_min_s")
