"""Property-based tests: the config loader and every MQTT command handler under thousands of bad inputs.

Each input must end in a usable result or a clear refusal (one line per problem); never in another exception.
"""
from __future__ import annotations

import json
import math
import queue
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.commands import (
    COMMANDS, MAX_PAYLOAD_BYTES, PART_ID_MAX_CHARS, Command, CommandRefused, parse_command, request_id_of,
)
from edge.config.errors import ConfigError
from edge.config.load import load_config, parse_config
from edge.config.schema import Config
from edge.config.secrets import resolve_mqtt_password
from edge.control import apply_command
from edge.daemon import Daemon
from edge.publish.mqtt import MqttLink
from edge.notify import SystemdNotifier
from tests.support.broker import strict_json
from tests.support.daemon_harness import sample_folder, write_config
from tests.support.helpers import ROOT, wait_until

# About 25 s in all on an idle CI machine; the pure-Python YAML parser dominates.
CONFIG_EXAMPLES = 2000
COMMAND_EXAMPLES = 2500
HANDLER_EXAMPLES = 1000
FILE_EXAMPLES = 200
REQUEST_ID_MAX_CHARS = 64
REASON_MAX_CHARS = 300
FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- the config loader

EXAMPLE_NAME = "config.yaml"
EXAMPLE_LINES = (ROOT / EXAMPLE_NAME).read_text(encoding="utf-8").splitlines()
SETTING_LINE = re.compile(r"^(?P<head>\s*[A-Za-z_]+:)(?P<gap>[ \t]*)(?P<value>[^#]*?)(?P<tail>\s*(#.*)?)$")
VALUED_LINES = [i for i, line in enumerate(EXAMPLE_LINES) if (m := SETTING_LINE.match(line)) and m["value"]]
ERROR_LINE = re.compile(rf"^{re.escape(EXAMPLE_NAME)}:(\d+): \S")

YAML_SPECIALS = [
    "", "~", "null", "yes", "no", "on", "off", "true", "True", "[]", "{}", "[1, 2", "'", '"', "&a", "*a", "&a x",
    "!!binary xx", "!!float abc", "!!int 1.5", "!!python/object:os.system", "1e999", "-1e999", ".nan", ".inf", "-.inf",
    "0x1F", "0o17", "1_000", "2001-12-14", "12:30:00", "-", "? x", ": x", "|", ">", "*", "{a: 1}", "[0, 0, 10, 10]",
    "[0, 0, -1, 10]", "[1, 2, 3]", "/nonexistent/path", "../x", "rtsp://cam/1", "a ! appsink", "lineguard/#",
    "/lead", "x" * 300, "\t", "%", "@", "`", "0", "-0", "-5", "65536", "1.5", "99999999999999999999999",
]
INJECTED_VALUES = (
    st.sampled_from(YAML_SPECIALS)
    | st.integers(min_value=-(2**80), max_value=2**80).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.text(max_size=12)
)


def _replace_value(lines: list[str], index: int, value: str) -> None:
    match = SETTING_LINE.match(lines[index])
    if match:
        lines[index] = f"{match['head']} {value}{match['tail']}"


def _swap_values(lines: list[str], first: int, second: int) -> None:
    a, b = SETTING_LINE.match(lines[first]), SETTING_LINE.match(lines[second])
    if a and b:
        lines[first] = f"{a['head']}{a['gap']}{b['value']}{a['tail']}"
        lines[second] = f"{b['head']}{b['gap']}{a['value']}{b['tail']}"


@st.composite
def mutated_examples(draw: st.DrawFn) -> str:
    """The shipped config.yaml with 1-4 edits a field engineer might make by mistake."""
    lines = list(EXAMPLE_LINES)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        other = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "move", "swap", "inject", "inject", "indent", "insert"]))
        if edit == "delete":
            del lines[index]
        elif edit == "duplicate":
            lines.insert(other, lines[index])
        elif edit == "move":
            lines.insert(other, lines.pop(index))
        elif edit == "swap":
            _swap_values(lines, index, other)
        elif edit == "inject":
            target = draw(st.sampled_from(VALUED_LINES)) if len(lines) == len(EXAMPLE_LINES) else index
            _replace_value(lines, min(target, len(lines) - 1), draw(INJECTED_VALUES))
        elif edit == "indent":
            lines[index] = draw(st.sampled_from(["", " ", "  ", "    ", "\t", "- "])) + lines[index].lstrip()
        else:
            lines.insert(index, draw(st.text(max_size=20) | st.sampled_from(YAML_SPECIALS)))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


def assert_usable(config: Config) -> None:
    assert isinstance(config, Config)
    assert config.storage.dir.is_absolute() and config.model.is_absolute()
    assert math.isfinite(config.source.fps) and 0 <= config.source.fps <= 1000
    if config.source.kind in ("camera", "stream", "gstreamer"):  # the live kinds' own keys
        assert config.source.reconnect_max_s >= config.source.reconnect_initial_s > 0
    assert config.mqtt.reconnect_max_s >= config.mqtt.reconnect_min_s > 0
    assert config.alerts.debounce_m >= config.alerts.debounce_n >= 1
    if config.source.kind in ("folder", "video"):
        assert config.source.path is not None
    if config.source.kind in ("stream", "gstreamer"):
        assert config.source.url
    try:
        # The link takes the mqtt section as it is: whatever the config accepts, the link must take too.
        MqttLink(config.mqtt, f"{config.mqtt.topic_prefix}/{config.device_id}", client_id=config.mqtt_client_id,
                 password=resolve_mqtt_password(config.mqtt))
    except ConfigError as exc:
        assert "password file" in str(exc)


def assert_refusal(exc: ConfigError, text: str) -> None:
    assert exc.errors
    last_line = text.count("\n") + 1
    for message in exc.errors:
        assert len(message.splitlines()) == 1, message
        match = ERROR_LINE.match(message)
        assert match, message
        assert 1 <= int(match[1]) <= last_line, message


@settings(max_examples=CONFIG_EXAMPLES, **FUZZ_SETTINGS)
@given(mutated_examples())
def test_config_loader_on_mutated_example_config(text: str):
    try:
        config = parse_config(text, filename=EXAMPLE_NAME, base_dir=ROOT)
    except ConfigError as exc:
        assert_refusal(exc, text)
    else:
        assert_usable(config)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config") / "config.yaml"


@settings(max_examples=FILE_EXAMPLES, **FUZZ_SETTINGS)
@given(st.binary(max_size=200) | st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00"]).flatmap(
    lambda prefix: st.just(prefix + (ROOT / EXAMPLE_NAME).read_bytes())))
def test_config_file_of_any_bytes_loads_or_is_refused_in_one_line_each(config_file: Path, data: bytes):
    config_file.write_bytes(data)
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        assert exc.errors and all(len(m.splitlines()) == 1 and m.startswith(str(config_file)) for m in exc.errors)
    else:
        assert_usable(config)


# ---------------------------------------------------------------- MQTT command payloads

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=150)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
FIELD_NAMES = st.sampled_from(["threshold", "part_id", "request_id"]) | st.text(max_size=10)
NUMBER_LITERALS = st.sampled_from([
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0", "0.0", "5e-324", "1.7976931348623157e308",
    "true", '"5"', "[5]", "{}",
])


def encoded(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}", '{"threshold":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.integers(MAX_PAYLOAD_BYTES - 2, MAX_PAYLOAD_BYTES + 2).map(lambda size: b"{" + b" " * (size - 2) + b"}"),
    JSON_VALUES.map(encoded),
    st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=4).map(encoded),
    st.fixed_dictionaries({"threshold": JSON_SCALARS}, optional={"request_id": JSON_SCALARS}).map(encoded),
    st.fixed_dictionaries({}, optional={"part_id": JSON_SCALARS, "request_id": JSON_SCALARS}).map(encoded),
    st.builds(nested, st.integers(1, 2100), st.sampled_from(["[", '{"a":', '{"threshold":'])),
    st.integers(1, 5000).map(lambda digits: b'{"threshold": ' + b"9" * digits + b"}"),
    NUMBER_LITERALS.map(lambda literal: f'{{"threshold": {literal}}}'.encode()),
    st.text(max_size=60).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
NAMES = st.sampled_from(sorted(COMMANDS)) | st.text(max_size=80)


def assert_one_line_reason(reason: str) -> None:
    assert reason, "empty reason"
    assert len(reason.splitlines()) == 1 and reason == reason.strip(), repr(reason)
    assert len(reason) <= REASON_MAX_CHARS, reason


def assert_valid_command(command: Command, name: str) -> None:
    assert command.name == name
    args = command.args
    request_id = args.request_id
    assert request_id is None or (isinstance(request_id, str) and len(request_id) <= REQUEST_ID_MAX_CHARS)
    if name == "threshold":
        assert isinstance(args.threshold, float) and math.isfinite(args.threshold) and args.threshold > 0
    if name == "trigger":
        assert args.part_id is None or (isinstance(args.part_id, str) and 1 <= len(args.part_id) <= PART_ID_MAX_CHARS)


@settings(max_examples=COMMAND_EXAMPLES, **FUZZ_SETTINGS)
@given(NAMES, PAYLOADS)
def test_parse_command_returns_a_command_or_a_one_line_refusal(name: str, payload: bytes):
    try:
        command = parse_command(name, payload)
    except CommandRefused as exc:
        assert_one_line_reason(str(exc))
    else:
        assert_valid_command(command, name)
    request_id = request_id_of(payload)
    assert request_id is None or (isinstance(request_id, str) and len(request_id) <= REQUEST_ID_MAX_CHARS)


@pytest.mark.parametrize("name, payload", [
    ("threshold", b'{"threshold": 1' + b"0" * 400 + b"}"),  # an int too large for a float
    ("threshold", b'{"threshold": 5, "a\\nb\\u2028c": 1}'),  # a key with line breaks, echoed in the reason
    ("trigger", ('{"part_id": "x", "\\u0085' + "k" * 500 + '": 1}').encode()),
])
def test_refusals_found_by_fuzzing_stay_one_line(name: str, payload: bytes):
    with pytest.raises(CommandRefused) as refused:
        parse_command(name, payload)
    assert_one_line_reason(str(refused.value))


# ---------------------------------------------------------------- the daemon's own handler, in-process


class RecordingLink:
    """Stands in for MqttLink: records what the daemon publishes."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes | str, int, bool]] = []

    def publish(self, subtopic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        self.published.append((subtopic, payload, qos, retain))
        return True

    def stop(self, clean: bool = True) -> None:
        pass

    def since(self, count: int, subtopic: str) -> list[dict]:
        return [strict_json(p) for s, p, _, _ in self.published[count:] if s == subtopic]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A started daemon (real model, outbox and folder source) whose MQTT link records instead of sending."""
    tmp_path = tmp_path_factory.mktemp("daemon")
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False})
    instance = Daemon(load_config(config), config)
    instance.notifier = SystemdNotifier(env={})  # never notify a systemd that runs the tests
    instance.start()
    instance.link = RecordingLink()
    instance.reloads = []
    instance.reload = instance.reloads.append  # the real reload is exercised in test_reload.py
    yield instance
    instance.shutdown(clean=True)


def queued_commands(daemon: Daemon) -> list[Command]:
    commands = []
    while True:
        try:
            commands.append(daemon.commands.queue.get_nowait())
        except queue.Empty:
            return commands


def check_applied(daemon: Daemon, command: Command) -> None:
    """Run the main loop's side of a queued command and check what it reports."""
    if command.name == "trigger":
        return  # the main loop inspects a frame for it; tests/test_daemon.py covers that with a real process
    link, before = daemon.link, len(daemon.link.published)
    apply_command(daemon.controls, command)
    args = command.args
    if command.name == "threshold":
        [reply] = link.since(before, "reply")
        assert reply["request_id"] == args.request_id
        assert_one_line_reason(reply["reason"])
        low, high = daemon.station.inspector.calibration.threshold_range()
        if not low <= args.threshold <= high:  # passes or fails everything: refused, nothing else changes
            assert reply["ok"] is False and f"outside {low:.6g} .. {high:.6g}" in reply["reason"]
            assert daemon.station.inspector.threshold != args.threshold and len(link.published) == before + 1
            return
        assert daemon.station.inspector.threshold == args.threshold and reply["ok"] is True
        [stats] = link.since(before, "stats")
        assert stats["threshold"] == args.threshold
        [state] = link.since(before, "state")
        assert state["threshold"] == args.threshold
    elif command.name == "threshold_reset":
        [reply] = link.since(before, "reply")
        assert reply["ok"] is True and reply["request_id"] == args.request_id
        assert daemon.station.inspector.threshold == daemon.station.inspector.calibration.threshold
    elif command.name == "feedback":  # answered from the feedback thread; no frame was inspected to label
        assert wait_until(lambda: link.since(before, "reply"), 5)
        [reply] = link.since(before, "reply")
        assert reply["ok"] is False and reply["request_id"] == args.request_id and "not among" in reply["reason"]
    elif command.name in ("shadow", "promote", "rollback", "mask", "mask_reset"):  # answered once, between frames
        [reply] = link.since(before, "reply")
        assert reply["request_id"] == args.request_id and reply["command"] == command.name
        assert_one_line_reason(reply["reason"])
    else:
        assert command.name == "reload" and daemon.reloads[-1] == args.request_id


@settings(max_examples=HANDLER_EXAMPLES, **FUZZ_SETTINGS)
@given(NAMES, PAYLOADS)
def test_daemon_command_handler_queues_or_replies_exactly_once(daemon: Daemon, name: str, payload: bytes):
    before = len(daemon.link.published)
    daemon.commands.on_command(name, payload)
    replies = daemon.link.since(before, "reply")
    commands = queued_commands(daemon)
    assert len(replies) + len(commands) == 1 and len(daemon.link.published) == before + len(replies)
    if replies:
        [reply] = replies
        assert reply["ok"] is False and reply["command"] == name[:64]
        assert_one_line_reason(reply["reason"])
        assert reply["request_id"] is None or len(reply["request_id"]) <= REQUEST_ID_MAX_CHARS
    else:
        assert_valid_command(commands[0], name)
        check_applied(daemon, commands[0])


def test_daemon_command_handler_replies_busy_when_the_queue_is_full(daemon: Daemon):
    queued_commands(daemon)
    for index in range(daemon.commands.queue.maxsize):
        daemon.commands.on_command("threshold", encoded({"threshold": 1.0 + index}))
    before = len(daemon.link.published)
    daemon.commands.on_command("threshold", b'{"threshold": 3, "request_id": "late"}')
    [reply] = daemon.link.since(before, "reply")
    assert reply == {**reply, "ok": False, "command": "threshold", "request_id": "late"}
    assert reply["reason"].startswith("busy")
    # A trigger finds the station busy too (the queue cannot take it, or an earlier one is still unanswered).
    daemon.commands.on_command("trigger", b'{"request_id": "full"}')
    [reply] = daemon.link.since(before + 1, "reply")
    assert reply == {**reply, "ok": False, "command": "trigger", "request_id": "full", "seq": None}
    assert reply["reason"].startswith("busy")
    assert [c.args.threshold for c in queued_commands(daemon)] == [1.0 + i for i in range(daemon.commands.queue.maxsize)]