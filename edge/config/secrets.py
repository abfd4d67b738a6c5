"""Secrets the config points to but never holds: the MQTT broker password."""
from __future__ import annotations

import os
from pathlib import Path

from edge.config.broker import MqttConfig
from edge.config.errors import ConfigError

CREDENTIAL_NAME = "mqtt_password"  # systemd LoadCredential= name


def resolve_mqtt_password(mqtt: MqttConfig) -> str | None:
    """Find the broker password without it ever being part of the config.

    Order: the environment variable named by ``password_env``, then
    ``password_file``, then ``$CREDENTIALS_DIRECTORY/mqtt_password`` (systemd
    LoadCredential=). Returns None when none is set. Raises ConfigError when
    ``password_file`` cannot be read.
    """
    from_env = os.environ.get(mqtt.password_env)
    if from_env:
        return from_env
    if mqtt.password_file is not None:
        return _read_secret(mqtt.password_file)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        candidate = Path(credentials) / CREDENTIAL_NAME
        if candidate.is_file():
            return _read_secret(candidate)
    return None


def _read_secret(path: Path) -> str:
    try:
        # Editors and `echo` add a trailing newline that is not part of the password.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError([f"{path}: cannot read MQTT password file: {reason}"]) from None
