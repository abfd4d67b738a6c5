"""Tests for edge.config: schema, error reporting, paths and secrets."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from ruamel.yaml import YAML

from edge.capture.kinds import source_kind
from edge.capture.registry import DEFAULT_KIND
from edge.config.broker import MqttConfig
from edge.config.errors import ConfigError
from edge.config.load import load_config, parse_config
from edge.config.schema import Config, json_schema
from edge.config.secrets import resolve_mqtt_password

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.yaml"

# The example config.yaml runs the MNIST demo; these are the only values in it
# that differ from the defaults in the code.
DEMO_OVERRIDES = {
    ("source", "path"): "samples/mnist",
    ("source", "fps"): 20,
}

# Minimal valid config: the default source kind (folder) needs a path.
MINIMAL = "source:\n  path: frames\n"

ERROR_LINE = re.compile(r"^[^:]+:\d+: ")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "LINEGUARD_MQTT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def errors_of(text: str, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, **kwargs)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def defaults(model: type[BaseModel] = Config, prefix: tuple = ()) -> dict[tuple, Any]:
    """Every leaf setting of ``model`` with the default the code uses."""
    result: dict[tuple, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if field.discriminator is not None:  # the source section: config.yaml shows the default kind's keys
            annotation = source_kind(DEFAULT_KIND).config
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            result.update(defaults(annotation, prefix + (name,)))
        else:
            result[prefix + (name,)] = field.get_default(call_default_factory=False)
    return result


def flatten(data: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    result: dict[tuple, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            result.update(flatten(value, prefix + (key,)))
        else:
            result[prefix + (key,)] = value
    return result


# ---------------------------------------------------------------- example file


def test_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.model == REPO / "models" / "mnist-1"
    assert config.source.kind == "folder"
    assert config.source.path == REPO / "samples" / "mnist"
    assert config.source.fps == 20
    assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", 1883)


def test_example_config_documents_every_default():
    documented = flatten(YAML(typ="safe", pure=True).load(EXAMPLE.read_text()))
    expected = defaults()
    assert set(documented) == set(expected), "config.yaml must list every setting, and only those"
    for key, default in expected.items():
        value = documented[key]
        if key in DEMO_OVERRIDES:
            assert value == DEMO_OVERRIDES[key] != default, key
        elif isinstance(default, Path):
            assert value == str(default), key
        else:
            assert value == default, key


def test_example_config_comments_every_key():
    for number, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        if re.match(r"^\s*[a-z_]+:", line):
            assert re.search(r"\s#\s*\S", line), f"config.yaml:{number} has no comment"


def test_empty_file_only_lacks_the_source_path():
    assert errors_of("") == ["config.yaml:1: source.path: is required when source.kind is 'folder'"]


def test_minimal_file_gives_defaults(tmp_path: Path):
    config = parse_config(MINIMAL, base_dir=tmp_path)
    got = flatten(config.model_dump())
    for key, default in defaults().items():
        if key == ("source", "path"):
            assert got[key] == tmp_path / "frames"
        elif key == ("model",):
            assert got[key] == tmp_path / default
        elif key == ("storage", "dir"):
            assert got[key] == tmp_path / "state"
        else:
            assert got[key] == default, key


def test_empty_sections_mean_defaults():
    config = parse_config(MINIMAL + "mqtt:\n  # host: broker\ntrigger:\n")
    assert config.mqtt == parse_config(MINIMAL).mqtt
    assert config.trigger.mode == "continuous"


# ---------------------------------------------------------------- error reporting


def test_all_errors_reported_with_lines():
    text = (
        "source:\n"  # 1
        "  path: frames\n"  # 2
        "  fps: -5\n"  # 3
        "inference:\n"  # 4
        "  thresold: 0.5\n"  # 5
        "  threads: fast\n"  # 6
        "source:\n"  # 7
        "  kind: camera\n"  # 8
    )
    errors = errors_of(text, filename="site/line3.yaml")
    assert len(errors) == 4, errors
    assert errors[0] == "site/line3.yaml:3: source.fps: must be >= 0, got -5"
    assert errors[1].startswith("site/line3.yaml:5: inference.thresold: unknown key 'thresold'")
    assert "did you mean 'threshold'?" in errors[1]
    assert errors[2] == "site/line3.yaml:6: inference.threads: expected a whole number, got 'fast'"
    assert errors[3].startswith("site/line3.yaml:7: source: duplicate key 'source'")
    assert "line 1" in errors[3]


def test_every_duplicate_reported_and_validation_continues():
    text = MINIMAL + "mqtt:\n  port: 1\n  port: 2\n  port: 3\n  keepalive_s: 1\n"
    errors = errors_of(text)
    assert [e.split(": ")[0] for e in errors] == [
        "config.yaml:5",
        "config.yaml:6",
        "config.yaml:7",
    ]
    assert errors[2] == "config.yaml:7: mqtt.keepalive_s: must be >= 5, got 1"


def test_list_items_have_their_own_path():
    errors = errors_of(MINIMAL + "inference:\n  roi:\n    - 0\n    - 0\n    - -3\n    - x\n")
    assert errors == [
        "config.yaml:7: inference.roi.2: must be > 0, got -3",
        "config.yaml:8: inference.roi.3: expected a whole number, got 'x'",
    ]
    assert errors_of(MINIMAL + "inference: {roi: [1, 2, 3]}") == [
        "config.yaml:3: inference.roi: expected 4 numbers [x, y, w, h], got 3"
    ]
    roi = parse_config(MINIMAL + "inference: {roi: [1, 2, 30, 40]}").inference.roi
    assert tuple(roi) == (1, 2, 30, 40)


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("log_level: verbose", "log_level: must be one of 'debug', 'info', 'warning' or 'error', got 'verbose'"),
        ("device_id: line/3", "device_id: must match"),
        ("mqtt: {port: 70000}", "mqtt.port: must be <= 65535, got 70000"),
        ("mqtt: {enabled: maybe}", "mqtt.enabled: expected true or false, got 'maybe'"),
        ("mqtt: {host: 10}", "mqtt.host: expected text (put it in quotes), got 10"),
        ("mqtt: {host: 'broker..plant'}", "mqtt.host: 'broker..plant' is not a valid host name or IP address"),
        ("mqtt: {topic_prefix: 'a/#'}", "mqtt.topic_prefix: must not contain the wildcards"),
        ("mqtt: {topic_prefix: '/a'}", "mqtt.topic_prefix: must not start or end with '/'"),
        ("mqtt: {topic_prefix: ''}", "mqtt.topic_prefix: must not be empty"),
        ("mqtt: 5", "mqtt: expected a section of key: value settings, got 5"),
        ("inference: {threads: 17}", "inference.threads: must be <= 16, got 17"),
        ("inference: {threads: 2.5}", "inference.threads: expected a whole number, got 2.5"),
        ("inference: {threshold: .nan}", "inference.threshold: expected a finite number"),
        ("model: ''", "model: must not be empty"),
        ("mqtt: {tls: {enabled: true, tls_version: 1.2}}", "mqtt.tls.tls_version: unknown key"),
        ("colour: red", "colour: unknown key 'colour'; expected one of: device_id, model,"),
        ("trigger: {timeout_s: 0}", "trigger.timeout_s: must be > 0, got 0"),
    ],
)
def test_single_errors(snippet: str, message: str):
    errors = errors_of(MINIMAL + snippet + "\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"config.yaml:3: {message}"), errors[0]


def test_unreadable_yaml_value_reported_once():
    errors = errors_of(MINIMAL + "trigger:\n  timeout_s: !!float fast\n")
    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:4: trigger.timeout_s: cannot read value")


def test_syntax_error_is_one_line_with_its_line_number():
    errors = errors_of("source:\n  path: x\n  fps: [1, 2\nmqtt: {}\n", filename="c.yaml")
    assert len(errors) == 1
    assert re.match(r"^c\.yaml:\d+: YAML syntax error: ", errors[0])
    assert errors_of("a: 1\nb: c: d\n")[0].startswith("config.yaml:2: YAML syntax error: ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_document_must_be_a_mapping(text: str):
    errors = errors_of(text, filename="odd.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("odd.yaml:1: the document must be a mapping")


def test_missing_file_is_one_line_naming_it(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{missing}: ")


def test_load_config_names_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "c.yaml").write_text("\ufeff" + MINIMAL + "mqtt: {port: 0}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("c.yaml")
    assert info.value.errors == ["c.yaml:3: mqtt.port: must be >= 1, got 0"]


# ---------------------------------------------------------------- cross-field rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source: {kind: video}", "config.yaml:1: source.path: is required when source.kind is 'video'"),
        ("source: {kind: stream}", "config.yaml:1: source.url: is required when source.kind is 'stream'"),
        ("source: {kind: stream, url: camera.local}", "config.yaml:1: source.url: must be a URL"),
        ("source: {kind: gstreamer}", "config.yaml:1: source.url: is required when source.kind is 'gstreamer'"),
        (
            "source: {kind: gstreamer, url: 'v4l2src ! videoconvert'}",
            "config.yaml:1: source.url: a GStreamer pipeline must end in an appsink element",
        ),
        (
            "source: {kind: camera, reconnect_initial_s: 10, reconnect_max_s: 5}",
            "config.yaml:1: source.reconnect_max_s: must be >= source.reconnect_initial_s",
        ),
        (
            "source: {kind: camera}\nmqtt: {reconnect_min_s: 10, reconnect_max_s: 5}",
            "config.yaml:2: mqtt.reconnect_max_s: must be >= mqtt.reconnect_min_s",
        ),
        (
            "source: {kind: camera}\nalerts: {debounce_n: 3, debounce_m: 2}",
            "config.yaml:2: alerts.debounce_m: must be >= alerts.debounce_n (3), got 2",
        ),
        (
            "source: {kind: camera}\nalerts: {debounce_n: 3}",
            "config.yaml:2: alerts.debounce_m: must be >= alerts.debounce_n (3), got 1",
        ),
        (
            "source: {kind: camera}\nmqtt:\n  tls:\n    cert_file: c.pem\n",
            "config.yaml:3: mqtt.tls: cert_file and key_file must be given together",
        ),
    ],
)
def test_cross_field_rules(text: str, expected: str):
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]


def test_cross_field_rules_accept_valid_combinations():
    camera = parse_config("source: {kind: camera, index: 2, width: 640, height: 480}")
    assert not hasattr(camera.source, "path") and camera.source.index == 2
    stream = parse_config("source: {kind: stream, url: 'rtsp://cam/1'}")
    assert stream.source.url == "rtsp://cam/1"
    gst = parse_config("source: {kind: gstreamer, url: 'libcamerasrc ! videoconvert ! appsink drop=true'}")
    assert gst.source.kind == "gstreamer"
    alerts = parse_config(MINIMAL + "alerts: {debounce_n: 2, debounce_m: 3}").alerts
    assert (alerts.debounce_n, alerts.debounce_m) == (2, 3)


# ---------------------------------------------------------------- paths


def test_relative_paths_follow_the_config_file(tmp_path: Path):
    site = tmp_path / "site"
    (site / "tls").mkdir(parents=True)
    for name in ("c.pem", "k.pem"):
        (site / "tls" / name).write_text("PEM")
    (site / "config.yaml").write_text(
        "model: bundles/m2\n"
        "source: {kind: video, path: clips/run.mp4}\n"
        "inference: {ignore_mask: masks/m.png}\n"
        "mqtt:\n"
        "  password_file: secret.txt\n"
        "  tls: {enabled: true, ca_file: tls/c.pem, cert_file: tls/c.pem, key_file: tls/k.pem}\n"
        "storage: {dir: var}\n"
    )
    config = load_config(site / "config.yaml")
    assert config.model == site / "bundles" / "m2"
    assert config.source.path == site / "clips" / "run.mp4"
    assert config.inference.ignore_mask == site / "masks" / "m.png"
    assert config.mqtt.password_file == site / "secret.txt"
    assert config.mqtt.tls.ca_file == site / "tls" / "c.pem"
    assert config.mqtt.tls.cert_file == site / "tls" / "c.pem"
    assert config.mqtt.tls.key_file == site / "tls" / "k.pem"
    assert config.storage.dir == site / "var"
    assert all(isinstance(p, Path) for p in (config.model, config.source.path, config.storage.dir))


def test_parse_config_resolves_against_base_dir_or_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert parse_config(MINIMAL, base_dir=tmp_path).source.path == tmp_path / "frames"
    monkeypatch.chdir(tmp_path)
    assert parse_config(MINIMAL).model == tmp_path / "models" / "mnist-1"


def test_storage_dir_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert parse_config(MINIMAL, base_dir=tmp_path).storage.dir == tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/lineguard:/var/lib/other")
    assert parse_config(MINIMAL, base_dir=tmp_path).storage.dir == Path("/var/lib/lineguard")
    explicit = parse_config(MINIMAL + "storage: {dir: mine}", base_dir=tmp_path)
    assert explicit.storage.dir == tmp_path / "mine"


# ---------------------------------------------------------------- password


def test_password_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-credential\n")
    (tmp_path / "pw").write_text("from-file\n")
    with_file = parse_config(MINIMAL + "mqtt: {password_file: pw}", base_dir=tmp_path).mqtt
    without_file = parse_config(MINIMAL, base_dir=tmp_path).mqtt

    assert resolve_mqtt_password(without_file) is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert resolve_mqtt_password(without_file) == "from-credential"
    assert resolve_mqtt_password(with_file) == "from-file"
    monkeypatch.setenv("LINEGUARD_MQTT_PASSWORD", "from-env")
    assert resolve_mqtt_password(with_file) == "from-env"


def test_password_env_name_is_configurable(monkeypatch: pytest.MonkeyPatch):
    mqtt = parse_config(MINIMAL + "mqtt: {password_env: BROKER_PW}").mqtt
    monkeypatch.setenv("LINEGUARD_MQTT_PASSWORD", "wrong")
    monkeypatch.setenv("BROKER_PW", "right")
    assert resolve_mqtt_password(mqtt) == "right"


def test_unreadable_password_file_names_the_file(tmp_path: Path):
    mqtt = MqttConfig(password_file=tmp_path / "missing.txt")
    with pytest.raises(ConfigError) as info:
        resolve_mqtt_password(mqtt)
    assert len(info.value.errors) == 1
    assert str(tmp_path / "missing.txt") in info.value.errors[0]


def test_inline_password_is_rejected_without_echoing_it():
    secret = "hunter2-s3cret"
    errors = errors_of(MINIMAL + f"mqtt:\n  password: {secret}\n  port: {secret}\n")
    text = "\n".join(errors)
    assert errors[0].startswith("config.yaml:4: mqtt.password: unknown key 'password'")
    assert "password_env" in errors[0] and "password_file" in errors[0]
    assert "credential" in errors[0]
    assert secret not in text.replace(f"got '{secret}'", "")  # only the port value is echoed


def test_password_never_in_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secret = "hunter2-s3cret"
    (tmp_path / "pw").write_text(secret)
    monkeypatch.setenv("LINEGUARD_MQTT_PASSWORD", secret)
    config = parse_config(MINIMAL + "mqtt: {password_file: pw}", base_dir=tmp_path)
    assert resolve_mqtt_password(config.mqtt) == secret
    assert secret not in repr(config) and secret not in str(config)
    assert secret not in config.model_dump_json()


# ---------------------------------------------------------------- schema


def test_client_id_defaults_to_the_device_id():
    assert parse_config(MINIMAL + "device_id: cell-7\n").mqtt_client_id == "lineguard-cell-7"
    assert parse_config(MINIMAL + "mqtt:\n  client_id: plc-gw\n").mqtt_client_id == "plc-gw"


def test_json_schema_is_serialisable_and_described():
    schema = json.loads(json.dumps(json_schema()))
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    sections = schema["$defs"]
    assert {"FolderConfig", "CameraConfig", "MqttConfig", "TlsConfig", "StorageConfig"} <= set(sections)
    for model in [schema, *sections.values()]:
        for name, prop in model["properties"].items():
            assert prop.get("description"), name
    assert sections["FolderConfig"]["properties"]["fps"]["maximum"] == 1000


# ---------------------------------------------------------------- property test


def _key_names(model: type[BaseModel] = Config) -> set[str]:
    names = set(model.model_fields)
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= _key_names(field.annotation)
    return names


KEYS = st.sampled_from(sorted(_key_names())) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["folder", "camera", "stream", "mqtt", "rtsp://x/y", "a ! appsink", "1.5", "fast"])
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
FRAGMENTS = [
    "source", "mqtt", "tls", "fps", "path", "kind", ":", ": ", "\n", "  ", "- ", "[", "]", "{", "}",
    ",", "'", '"', "#", "&a ", "*a", "!!int ", "!x ", "---\n", "...", "~", "1", "-5", ".nan", "yes",
    "? ", "|\n", ">\n", "\t", "%YAML 1.2\n", "<<: ",
]
EXAMPLE_TEXT = EXAMPLE.read_text()
YAMLISH = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=40).map("".join)


def _dump(data: Any) -> str:
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, stream)
    return stream.getvalue()


def _mutated_example(draw: st.DrawFn) -> str:
    """The example config with one setting replaced by an arbitrary value."""
    data = YAML(typ="safe", pure=True).load(EXAMPLE_TEXT)
    keys = sorted(flatten(data))
    path = draw(st.sampled_from(keys))
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = draw(TREES)
    return _dump(data)


@st.composite
def documents(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(YAMLISH)
    if choice == 1:
        return draw(st.text(max_size=60))
    if choice == 2:
        return _dump(draw(st.dictionaries(KEYS, TREES, max_size=6)))
    return _mutated_example(draw)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_parse_config_never_fails_unexpectedly(text: str):
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert exc.errors
        for line in exc.errors:
            assert ERROR_LINE.match(line), line
            assert "\n" not in line
    else:
        assert isinstance(config, Config)
        assert not math.isnan(config.source.fps)
        assert config.storage.dir is not None and config.storage.dir.is_absolute()
