"""Secrets the config points to but never holds: the MQTT broker password (and the reader the page's uses)."""
from __future__ import annotations

import os
from pathlib import Path

from edge.config.broker import MqttConfig
from edge.config.errors import ConfigError
from edge.core.files import read_limited

CREDENTIAL_NAME = "mqtt_password"  # systemd LoadCredential= name
MAX_SECRET_BYTES = 64 * 1024  # a password is a line; more is not one, and is not read


def resolve_mqtt_password(mqtt: MqttConfig) -> str | None:
    """Find the broker password without it ever being part of the config.

    Order: the environment variable named by ``password_env``, then
    ``password_file``, then ``$CREDENTIALS_DIRECTORY/mqtt_password`` (systemd
    LoadCredential=). Returns None when none is set. Raises ConfigError when
    ``password_file`` cannot be read.
    """
    return find_secret(mqtt.password_env, mqtt.password_file, CREDENTIAL_NAME, "MQTT password file")


def find_secret(env_name: str, password_file: Path | None, credential_name: str, what: str) -> str | None:
    """A password by the station's one order: $<env_name>, then ``password_file``, then the systemd credential
    $CREDENTIALS_DIRECTORY/<credential_name>. None when none is set; ConfigError when a file cannot be read."""
    from_env = os.environ.get(env_name)
    if from_env:
        return from_env
    path, credentials = password_file, os.environ.get("CREDENTIALS_DIRECTORY")
    if path is None and credentials and (Path(credentials) / credential_name).exists():
        path = Path(credentials) / credential_name  # there but unreadable is an error, not "no password"
    return read_secret(path, what) if path is not None else None


def read_secret(path: Path, what: str) -> str:
    """A password file's first line, read bounded from a regular file only (as the config is); ConfigError
    naming the file otherwise, so a FIFO cannot hang the start and /dev/zero cannot fill the memory."""
    try:
        # Editors and `echo` add a trailing newline that is not part of the password.
        return read_limited(path, MAX_SECRET_BYTES).decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError([f"{path}: cannot read {what}: {reason}"]) from None
