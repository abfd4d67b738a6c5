"""Field helpers shared by the config sections: file paths and bounds that depend on another key."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo


def _reject_empty_path(value: Any) -> Any:
    # Path("") silently means "the current directory"; that is never intended.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


FilePath = Annotated[Path, BeforeValidator(_reject_empty_path)]


def base_dir(info: ValidationInfo) -> Path:
    """Directory that relative paths are resolved against."""
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


def resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Make ``path`` absolute relative to the config file's directory."""
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base_dir(info) / path


def not_below(value: float, info: ValidationInfo, section: str, other: str) -> float:
    """A bound that depends on another key of the same section (validated before this one)."""
    low = info.data.get(other)
    if low is not None and value < low:
        raise ValueError(f"must be >= {section}.{other} ({low}), got {value}")
    return value


# Mosquitto drops the connection on a topic with more levels than this, or with a control character, and
# paho refuses topics over 65,535 bytes: a prefix that breaks these would pass check-config and deliver nothing.
# The bounds below leave room for <device_id>/<subtopic> and Home Assistant's <component>/<node>/<object>/config.
PREFIX_MAX_BYTES = 1024
PREFIX_MAX_LEVELS = 64


def _is_control_or_nonchar(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE \
        or 0xD800 <= code <= 0xDFFF


def check_mqtt_string(value: str) -> str:
    """A string the broker reads (topic, client id, user name): it refuses control characters as malformed."""
    bad = next((char for char in value if _is_control_or_nonchar(char)), None)
    if bad is not None:
        raise ValueError(f"must not contain the control character U+{ord(bad):04X}")
    if len(value.encode("utf-8")) > 65535:
        raise ValueError("is longer than MQTT's 65,535 bytes")
    return value


def check_topic_prefix(value: str) -> str:
    """A topic prefix every MQTT broker takes: the broker's refusal becomes a config error with a line number."""
    if "+" in value or "#" in value:
        raise ValueError("must not contain the wildcards '+' or '#'")
    if value.startswith("/") or value.endswith("/"):
        raise ValueError("must not start or end with '/'")
    if value.startswith("$"):
        raise ValueError("must not start with '$' (topics such as $SYS belong to the broker)")
    if len(value.encode("utf-8")) > PREFIX_MAX_BYTES:
        raise ValueError(f"is {len(value.encode('utf-8'))} bytes long; at most {PREFIX_MAX_BYTES}")
    check_mqtt_string(value)
    if value.count("/") + 1 > PREFIX_MAX_LEVELS:
        raise ValueError(f"has {value.count('/') + 1} topic levels; at most {PREFIX_MAX_LEVELS}")
    return value
