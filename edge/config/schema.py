"""Typed configuration for the lineguard edge daemon.

The configuration is a YAML file that field engineers edit on the device.
It is validated in a single pass and every problem is reported at once, one
per line, as ``FILE:LINE: key.path: message``, so that all mistakes can be
fixed before the service is restarted.

Relative paths in the file are resolved against the directory that holds
the file, so the daemon behaves the same whatever its working directory.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

__all__ = [
    "AlertsConfig",
    "Config",
    "ConfigError",
    "InferenceConfig",
    "MqttConfig",
    "SourceConfig",
    "StorageConfig",
    "TlsConfig",
    "TriggerConfig",
    "json_schema",
    "load_config",
    "parse_config",
    "resolve_mqtt_password",
]


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------
# Field helpers


def _reject_empty_path(value: Any) -> Any:
    # Path("") silently means "the current directory"; that is never intended.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


FilePath = Annotated[Path, BeforeValidator(_reject_empty_path)]


def _base_dir(info: ValidationInfo) -> Path:
    """Directory that relative paths are resolved against."""
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Make ``path`` absolute relative to the config file's directory."""
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else _base_dir(info) / path


# --------------------------------------------------------------------------
# Sections

SourceKind = Literal["folder", "video", "camera", "stream", "gstreamer"]
_NEEDS_PATH = ("folder", "video")
_NEEDS_URL = ("stream", "gstreamer")


def _not_below(value: float, info: ValidationInfo, section: str, other: str) -> float:
    """A bound that depends on another key of the same section (validated before this one)."""
    low = info.data.get(other)
    if low is not None and value < low:
        raise ValueError(f"must be >= {section}.{other} ({low}), got {value}")
    return value


class SourceConfig(BaseModel):
    """Where frames come from."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: SourceKind = Field(
        "folder",
        description="Frame source: folder of images, video file, V4L2 camera, "
        "RTSP/HTTP stream or a GStreamer pipeline.",
    )
    path: FilePath | None = Field(
        None,
        validate_default=True,
        description="Folder of images or video file (required for kind folder and video).",
    )
    url: str | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description="RTSP/HTTP URL for kind stream, or a GStreamer pipeline string "
        "ending in appsink for kind gstreamer (required for those kinds).",
    )
    index: int = Field(0, ge=0, strict=True, description="V4L2 camera index (/dev/videoN).")
    fps: float = Field(
        10.0,
        ge=0,
        le=1000,
        strict=True,
        description="Continuous inspection rate in frames per second; 0 = as fast as frames come.",
    )
    loop: bool = Field(
        False,
        strict=True,
        description="Restart folder/video replay at the end instead of exiting.",
    )
    width: int | None = Field(
        None, gt=0, strict=True, description="Requested camera capture width in pixels."
    )
    height: int | None = Field(
        None, gt=0, strict=True, description="Requested camera capture height in pixels."
    )
    reconnect_initial_s: float = Field(
        1.0, gt=0, strict=True, description="First delay before reopening a failed live source."
    )
    reconnect_max_s: float = Field(
        30.0,
        gt=0,
        strict=True,
        validate_default=True,
        description="Longest delay between reopen attempts (backoff doubles up to this).",
    )
    read_timeout_s: float = Field(
        5.0,
        gt=0,
        strict=True,
        description="A live source with no frame for this long counts as stalled and is reopened.",
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        kind = info.data.get("kind")
        if kind not in _NEEDS_PATH:
            return value
        if value is None:
            raise ValueError(f"is required when source.kind is '{kind}'")
        return _resolve(value, info)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind not in _NEEDS_URL:
            return value
        if value is None:
            raise ValueError(f"is required when source.kind is '{kind}'")
        if kind == "stream" and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError("must be a URL such as rtsp://camera.local/stream")
        # OpenCV can only pull frames out of a pipeline whose last element is appsink.
        if kind == "gstreamer" and not value.rsplit("!", 1)[-1].strip().startswith("appsink"):
            raise ValueError("a GStreamer pipeline must end in an appsink element")
        return value

    @field_validator("reconnect_max_s")
    @classmethod
    def _check_reconnect(cls, value: float, info: ValidationInfo) -> float:
        return _not_below(value, info, "source", "reconnect_initial_s")


class TriggerConfig(BaseModel):
    """When a frame is inspected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: Literal["continuous", "mqtt"] = Field(
        "continuous",
        description="continuous: inspect at source.fps; mqtt: inspect one frame per cmd/trigger command.",
    )
    timeout_s: float = Field(
        5.0, gt=0, strict=True, description="How long a trigger waits for a frame, in seconds."
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
        return _resolve(value, info)

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
        return _not_below(value, info, "alerts", "debounce_n")


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
        path = _resolve(value, info)
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
        if "+" in value or "#" in value:
            raise ValueError("must not contain the wildcards '+' or '#'")
        if value.startswith("/") or value.endswith("/"):
            raise ValueError("must not start or end with '/'")
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        return value

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
        return _resolve(value, info)

    @field_validator("reconnect_max_s")
    @classmethod
    def _check_reconnect(cls, value: float, info: ValidationInfo) -> float:
        return _not_below(value, info, "mqtt", "reconnect_min_s")


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
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        strict=True,
        description="At the end of a finite replay, how long to wait for pending messages to be delivered.",
    )

    @field_validator("dir")
    @classmethod
    def _resolve_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            return _resolve(value, info)
        # systemd passes a colon-separated list when several StateDirectory= are set.
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(state) if state else _base_dir(info) / "state"


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
    source: SourceConfig = Field(default_factory=SourceConfig, description="Frame source.")
    trigger: TriggerConfig = Field(default_factory=TriggerConfig, description="Inspection trigger.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Scoring.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Alert debouncing.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT publishing.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Local state.")

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)


# --------------------------------------------------------------------------
# YAML reading with line numbers

_INVALID = object()  # stands in for a value already reported as unreadable
_MAX_NODES = 100_000  # guards against alias expansion bombs
_NULL_TAG = "tag:yaml.org,2002:null"


class _Reader:
    """Turns YAML text into plain data, remembering the line of every key and list item."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[tuple[int, str]] = []
        # Line of every key (and of every list item), by key path.
        self.lines: dict[tuple, int] = {}
        self._yaml = YAML(typ="safe", pure=True)
        self._nodes = 0

    def error(self, line: int, path: tuple, message: str) -> None:
        prefix = f"{_path_str(path)}: " if path else ""
        self.errors.append((line, f"{self.filename}:{line}: {prefix}{message}"))

    def read(self, text: str) -> dict:
        """Parse ``text``; raises ConfigError for problems that stop parsing altogether."""
        with warnings.catch_warnings():
            # Reused anchors and similar are legal YAML; warnings would only clutter the log.
            warnings.simplefilter("ignore", YAMLWarning)
            warnings.simplefilter("ignore", YAMLFutureWarning)
            root = self._compose(text)
            if root is None or (isinstance(root, ScalarNode) and str(root.tag) == _NULL_TAG):
                return {}  # an empty file means "all defaults" (the default folder source still needs a path)
            if not isinstance(root, MappingNode):
                what = "a list" if isinstance(root, SequenceNode) else f"the value {_show(root.value)}"
                raise ConfigError(
                    [f"{self.filename}:{_line(root)}: the document must be a mapping of "
                     f"settings (key: value), got {what}"]
                )
            try:
                return self._mapping(root, (), frozenset())
            except _TooLarge:
                raise ConfigError(
                    [f"{self.filename}:1: the document expands to too many values (alias loop?)"]
                ) from None

    def _compose(self, text: str) -> Node | None:
        try:
            return self._yaml.compose(text)
        except YAMLError as exc:
            raise ConfigError([self._syntax_error(exc, text)]) from None
        except RecursionError:
            raise ConfigError([f"{self.filename}:1: the document is nested too deeply"]) from None

    def _syntax_error(self, exc: YAMLError, text: str) -> str:
        line = 1
        if isinstance(exc, MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            detail = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                detail = f"{exc.problem} ({exc.context})"
        elif isinstance(exc, ReaderError):
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            detail = str(exc).splitlines()[0]
        else:
            detail = (str(exc).splitlines() or ["invalid YAML"])[0]
        detail = " ".join(str(detail).split())
        return f"{self.filename}:{line}: YAML syntax error: {detail}"

    def _convert(self, node: Node, path: tuple, active: frozenset) -> Any:
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise _TooLarge
        if id(node) in active:
            self.error(_line(node), path, "an alias refers to itself")
            return _INVALID
        if isinstance(node, MappingNode):
            return self._mapping(node, path, active | {id(node)})
        if isinstance(node, SequenceNode):
            return self._sequence(node, path, active | {id(node)})
        return self._scalar(node, path)

    def _mapping(self, node: MappingNode, path: tuple, active: frozenset) -> dict:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = _line(key_node)
            if not isinstance(key_node, ScalarNode):
                self.error(line, path, "keys must be plain names, not lists or mappings")
                continue
            key = str(key_node.value)
            key_path = path + (key,)
            if key in first_seen:
                # Report and keep going so every other problem is reported too.
                self.error(line, key_path, f"duplicate key {key!r} (first set on line {first_seen[key]})")
                continue
            first_seen[key] = line
            self.lines[key_path] = line
            result[key] = self._convert(value_node, key_path, active)
        return result

    def _sequence(self, node: SequenceNode, path: tuple, active: frozenset) -> list:
        items = []
        for index, child in enumerate(node.value):
            self.lines[path + (index,)] = _line(child)
            items.append(self._convert(child, path + (index,), active))
        return items

    def _scalar(self, node: Node, path: tuple) -> Any:
        try:
            return self._yaml.constructor.construct_object(node, deep=True)
        except Exception as exc:  # noqa: BLE001 - ruamel's converters fail in many ways on odd tags
            detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.error(_line(node), path, f"cannot read value: {' '.join(str(detail).split())}")
            return _INVALID

    def line_for(self, loc: tuple) -> int:
        """Line of ``loc``, or of its nearest ancestor present in the file."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1


class _TooLarge(Exception):
    pass


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _path_str(path: tuple) -> str:
    parts = [str(p) if str(p).isprintable() else repr(str(p)) for p in path]
    return ".".join(parts)


# --------------------------------------------------------------------------
# Error messages

_PASSWORD_HINT = (
    "inline passwords are not supported; put the password in the environment variable "
    "named by mqtt.password_env, in mqtt.password_file, or in a systemd credential "
    "named mqtt_password (LoadCredential=)"
)


def _show(value: Any) -> str:
    """Short, single-line rendering of a user-supplied value."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _model_at(path: tuple) -> type[BaseModel] | None:
    """Section model that ``path`` points to, if any."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unknown_key(loc: tuple) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    message = f"unknown key {key!r}"
    if model is MqttConfig and key == "password":
        return f"{message}: {_PASSWORD_HINT}"
    if model is None:
        return message
    names = list(model.model_fields)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    return f"{message}; expected one of: {', '.join(names)}"


_TYPE_MESSAGES = {
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text (put it in quotes)",
    "path_type": "expected a file path",
    "model_type": "expected a section of key: value settings",
    "model_attributes_type": "expected a section of key: value settings",
    "dict_type": "expected a section of key: value settings",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "finite_number": "expected a finite number",
}

_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _number(value: Any) -> str:
    # Bounds on float fields come back as floats; "must be >= 0" reads better than 0.0.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(error: dict) -> str:
    """Plain-language message for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _show(error.get("input"))
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, got {got}"
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        return f"must be {op} {_number(ctx.get(name))}, got {got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {got}"
    if kind == "too_long":
        return f"expected {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {got}"


def _format_error(error: dict, reader: _Reader) -> tuple[int, str] | None:
    """One ``(line, "FILE:LINE: key.path: message")`` entry, or None to skip."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        # Unknown keys are reported even when their value was unreadable.
        line, message = reader.line_for(loc), _unknown_key(loc)
    elif error.get("input") is _INVALID:
        return None  # already reported while reading the YAML
    elif kind == "missing" and loc and isinstance(loc[-1], int):
        # A fixed-length list such as roi came up short: report it on the list.
        loc = loc[:-1]
        count = len(error["input"]) if isinstance(error["input"], (list, tuple)) else "?"
        line, message = reader.line_for(loc), f"expected 4 numbers [x, y, w, h], got {count}"
    elif loc == ("mqtt", "password_env"):
        # Whoever fills this in wrong has often typed the password itself: never echo it.
        line = reader.line_for(loc)
        message = "must be the NAME of an environment variable (letters, digits, '_'), not the password itself"
    else:
        line, message = reader.line_for(loc), _describe(error)
    prefix = f"{_path_str(loc)}: " if loc else ""
    return line, f"{reader.filename}:{line}: {prefix}{message}"


def _format_errors(exc: ValidationError, reader: _Reader) -> list[tuple[int, str]]:
    entries = (_format_error(error, reader) for error in exc.errors())
    # dict.fromkeys: a short list yields one "missing" error per absent item; keep one.
    return list(dict.fromkeys(entry for entry in entries if entry is not None))


def _fill_sections(data: dict, model: type[BaseModel]) -> None:
    """Give absent or empty sections an empty mapping so they are validated with context."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        # "mqtt:" with every sub-key commented out reads as null; treat it as empty.
        if data.get(name) is None:
            data[name] = {}
        if isinstance(data[name], dict):
            _fill_sections(data[name], annotation)


# --------------------------------------------------------------------------
# Public API


def parse_config(
    text: str, filename: str = "config.yaml", base_dir: Path | None = None
) -> Config:
    """Validate YAML ``text`` and return the configuration.

    ``filename`` only appears in error messages. Relative paths are resolved
    against ``base_dir`` (default: the current directory). Raises ConfigError
    listing every problem as ``FILENAME:LINE: key.path: message``.
    """
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    reader = _Reader(filename)
    data = reader.read(text)
    _fill_sections(data, Config)
    errors = list(reader.errors)
    try:
        config = Config.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        errors.extend(_format_errors(exc, reader))
    else:
        if not errors:
            return config
    errors.sort(key=lambda item: item[0])  # stable: keeps the order within a line
    raise ConfigError([message for _, message in errors])


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the config file at ``path``.

    Relative paths inside it are resolved against the file's directory.
    Raises ConfigError, also when the file cannot be read.
    """
    name = os.fspath(path)
    try:
        # utf-8-sig: tolerate the byte-order mark some Windows editors add.
        text = Path(name).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: cannot read config file: not UTF-8 text"]) from None
    return parse_config(text, filename=name, base_dir=Path(name).absolute().parent)


def json_schema() -> dict:
    """JSON Schema of the config file, with descriptions, for editor completion."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lineguard configuration"
    return schema


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
        candidate = Path(credentials) / "mqtt_password"
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
