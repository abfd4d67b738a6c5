"""`lineguard check-config [--probe]`: every problem of a config file in one pass, each on the line of the key it
concerns.

The keys are validated first; keys in error are then left out (their defaults stand in) so that the checks `run`
makes at start-up (the model bundle, the source's files, the page's password, the broker's files, storage) run in
the same pass, skipping what concerns a key already in error. ``--probe`` also opens the source once and logs in
to the broker, with a client id of its own and without publishing anything.
"""
from __future__ import annotations

import queue
import re
import time
from pathlib import Path

from edge import station_lock
from edge.capture.base import CaptureError
from edge.capture.registry import open_source
from edge.config.errors import ConfigError
from edge.config.load import Checked, check_text, read_config_text
from edge.config.schema import Config
from edge.exitcodes import EX_CONFIG, EX_OK, EX_TEMPFAIL
from edge.ports import listen_problem, listeners
from edge.publish.mqtt_client import build_client
from edge.config.secrets import resolve_mqtt_password
from edge.startup import preflight, preflight_storage
from edge.text import one_line

KEY = re.compile(r"^([a-z_]+(?:\.[a-z0-9_]+)*)\b")  # "source.path: ...", "web.host is ...", "storage.dir /x: ..."
PROBE_WAIT_S = 10.0  # the longest the probe waits for the source's first frame and for the broker's answer
# Problems that start with a file's path instead of a key: the key that named the file.
FILE_KEYS = {"MQTT password file": ("mqtt", "password_file"), "web password file": ("web", "password_file"),
             "OPC UA password file": ("opcua", "password_file")}
DEVICE_SOURCES = ("camera", "gstreamer")  # a device the running station has open cannot be probed beside it
SOURCE_KEYS = ("index", "url", "device", "pipeline", "path", "kind")  # the key a source's failure is shown on


def check_config(path: Path, probe: bool = False) -> tuple[int, list[str]]:
    """The exit code (0, 78, or 75 when only storage stands in the way, as for `run`) and the lines to print."""
    try:
        checked = check_text(read_config_text(path), str(path), Path(path).absolute().parent)
    except ConfigError as exc:
        return EX_CONFIG, list(exc.errors)
    problems = list(checked.errors)
    cfg, storage, notes, skipped = checked.config, [], [], []
    if cfg is not None:
        running = station_lock.holder(cfg.storage.dir)
        port_problems, held = check_ports(cfg, running)
        found = preflight(cfg) + port_problems
        problems += located(checked, found)
        notes = located(checked, held)
        storage = located(checked, preflight_storage(cfg.storage))
        if probe:  # what the checks above found already is not probed again
            concerns = {key[0] for key in checked.bad_keys if key} | {problem.split(".")[0] for problem in found}
            probed, skipped = probe_all(cfg, checked, concerns, running)
            problems, notes = problems + located(checked, probed), notes + located(checked, skipped)
    lines = [message for _, message in sorted(problems + storage + notes, key=lambda item: item[0])]
    if problems or storage:
        return (EX_CONFIG if problems else EX_TEMPFAIL), lines
    done = " (the source gave a frame; the broker took the login)" if probe and not skipped else ""
    return EX_OK, [f"{path}: OK{done}", *lines]


def check_ports(cfg: Config, running: station_lock.Holder | None) -> tuple[list[str], list[str]]:
    """The ports the config listens on that cannot be had now; one the station running on storage.dir listens on
    (its lock file lists them) is a note, not checked: check-config beside the running service does not fail on
    it. A port in use by anything else is a problem."""
    problems, held = [], []
    for listener in listeners(cfg):
        if running is not None and str(listener) in running.listening:
            held.append(f"{listener.setting}: {listener.host}:{listener.port} is held by the station running on "
                        f"storage.dir ({running.who()}): not checked")
        elif (problem := listen_problem(listener)) is not None:
            problems.append(problem)
    return problems, held


def probe_all(cfg: Config, checked: Checked, concerns: set[str], running: station_lock.Holder | None
              ) -> tuple[list[str | None], list[str]]:
    """--probe: the problems the source and the broker show, and what was not probed (a camera the running
    station has open cannot be opened beside it)."""
    held = []
    if running is not None and cfg.source.kind in DEVICE_SOURCES:
        held.append(f"source.kind: the {cfg.source.kind} was not probed: the station running on storage.dir "
                    f"({running.who()}) has it open")
        source = None
    else:
        source = None if "source" in concerns else probe_source(cfg, checked)
    return [source, *([] if "mqtt" in concerns else probe_broker(cfg))], held


def located(checked: Checked, problems: list[str | None]) -> list[tuple[int, str]]:
    """Each problem on the line of the key it names, as FILE:LINE: problem; those about a key already reported
    as a key error are left out (its default stood in)."""
    out = []
    for problem in filter(None, problems):
        match = KEY.match(problem)
        key = tuple(match.group(1).split(".")) if match else next(
            (path for what, path in FILE_KEYS.items() if f"cannot read {what}" in problem
             or f"cannot read the {what}" in problem), ())
        rest = problem[match.end():] if match else ""
        inner = KEY.match(rest[2:]) if rest.startswith(": ") else None  # "model: inference.threshold: ..."
        if inner and tuple(inner.group(1).split(".")) in checked.reader.lines:
            key = tuple(inner.group(1).split("."))
        if any(key[:len(bad)] == bad or bad[:len(key)] == key for bad in checked.bad_keys if key):
            continue
        line = checked.reader.line_for(key) if key else 1
        out.append((line, f"{checked.reader.filename}:{line}: {problem}"))
    return out


def probe_source(cfg: Config, checked: Checked) -> str | None:
    """Open the source once and wait for a frame: why none came, on the source's key, or None."""
    key = next((f"source.{k}" for k in SOURCE_KEYS if ("source", k) in checked.reader.lines), "source")
    states: queue.Queue = queue.Queue()
    try:
        source = open_source(cfg.source, False, lambda state, detail: states.put((state, detail)))
    except CaptureError as exc:
        return f"{key}: {one_line(str(exc))}"
    try:
        deadline = time.monotonic() + PROBE_WAIT_S
        while time.monotonic() < deadline:
            if source.read(0.2) is not None:
                return None
            while not states.empty():
                state, detail = states.get()
                if state == "reconnecting":
                    return f"{key}: {detail}"
            if source.exhausted:
                break
        return f"{key}: {source.stats().get('last_error') or f'no frame within {PROBE_WAIT_S:.0f} s'}"
    finally:
        source.close()


def probe_broker(cfg: Config) -> list[str]:
    """Log in to the broker as the station would (host, TLS, user name and password), publishing nothing: the
    refusal in words, or nothing."""
    if not cfg.mqtt.enabled:
        return []
    try:
        client = build_client(cfg.mqtt, f"{cfg.mqtt_client_id}-probe", resolve_mqtt_password(cfg.mqtt),
                              will=("lineguard-probe", "", 0))
    except (ConfigError, OSError, ValueError):
        return []  # already reported by the checks without --probe
    client.will_clear()  # nothing is published, not even a will
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, code, props: answers.put(code)
    client.on_connect_fail = lambda c, u: answers.put(None)
    client.on_disconnect = None
    settings = cfg.mqtt
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()
    try:
        code = answers.get(timeout=PROBE_WAIT_S)
    except queue.Empty:
        code = None
    finally:
        client.disconnect()
        client.loop_stop()
    if code is not None and not code.is_failure:
        return []
    if code is None:
        return [f"mqtt.host: broker {settings.host}:{settings.port} does not answer"]
    words = f"broker {settings.host}:{settings.port} refused the login: {str(code)[:1].lower()}{str(code)[1:]}"
    return [f"mqtt.{'username' if settings.username else 'host'}: {words}"]
