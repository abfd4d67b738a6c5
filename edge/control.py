"""What changes a running station: MQTT commands and reloads, each validated before anything changes.

A reload applies LIVE_SECTIONS and LIVE_KEYS at once. Every other setting (device_id, source, the broker
connection, storage.dir and the outbox) keeps its running value until a restart: the reply, the log, stats and
the retained state topic name the changed settings that wait for one. A threshold set by command is stored in
storage.dir (edge.threshold_store) and outlasts reloads and restarts until `threshold_reset` clears it, for its own
model only: a reload to another model drops it, loudly.
"""
from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edge.commands import Command, CommandRefused, FeedbackCommand, parse_command, request_id_of
from edge.config.errors import ConfigError
from edge.config.load import load_config
from edge.config.schema import Config
from edge.config.secrets import resolve_mqtt_password
from edge.core.inspector import Inspector
from edge.errors import StartupError
from edge.io.triggers import Trigger
from edge.mask_commands import apply_mask, reset_mask
from edge.publish.messages import model_ref
from edge.publish.reporter import Reporter
from edge.startup import build_inspector
from edge.text import one_line
from edge.threshold_audit import record_change
from edge.threshold_store import DroppedThreshold, clear_threshold, save_threshold, threshold_path

logger = logging.getLogger("lineguard")

COMMAND_QUEUE_SIZE = 64
# What a reload changes while inspecting: whole sections, and single keys of the others.
LIVE_SECTIONS = ("model", "log_level", "inference", "alerts", "trigger", "drift", "shadow")
LIVE_KEYS = {"mqtt": ("heatmap", "stats_interval_s"), "storage": ("evidence", "evidence_quota_mb", "drain_timeout_s")}

Reply = Callable[[str, bool, str, "str | None"], None]


class CommandQueue:
    """Commands from the MQTT thread, validated there and queued for the main loop; refusals answered at once."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.queue: queue.Queue[Command] = queue.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self.on_trigger = None  # set by edge.io.triggers.TriggerDesk: it queues a trigger or answers it busy

    def on_command(self, name: str, payload: bytes, origin: str = "mqtt") -> None:
        """``origin``: who sent it (the page and OPC UA queue their commands here too), for the threshold audit."""
        received_s = time.monotonic()  # a trigger's time: its frame is one captured after it
        try:
            command = replace(parse_command(name, payload), origin=origin)
            if command.name == "trigger" and self.on_trigger is not None:
                args = command.args
                self.on_trigger(Trigger("mqtt", received_s, args.part_id, args.request_id))
                return
            self.queue.put_nowait(command)
        except CommandRefused as exc:
            logger.warning("command %r refused: %s", name[:64], exc)
            self.reply(name, False, str(exc), request_id_of(payload))
        except queue.Full:
            self.reply(name, False, "busy: too many queued commands", request_id_of(payload))

    def put(self, command: Command) -> bool:
        """Queue a command from another interface; False when the queue is full."""
        try:
            self.queue.put_nowait(command)
            return True
        except queue.Full:
            return False

    def next(self, wait_s: float | None) -> Command | None:
        """The next command, waiting up to wait_s (None: do not wait)."""
        try:
            return self.queue.get(timeout=wait_s) if wait_s is not None else self.queue.get_nowait()
        except queue.Empty:
            return None


@dataclass(frozen=True)
class Controls:
    """What commands act on: the running config and model (callables: a reload replaces them), the reporter
    that answers, and the commands handled elsewhere."""

    cfg: Callable[[], Config]
    inspector: Callable[[], Inspector]
    report: Reporter
    feedback: Callable[[FeedbackCommand], None]  # files the frame on the feedback thread (edge.feedback); it replies
    reload: Callable[[str | None], None]  # re-reads config and model, then replies to the request_id
    shadow: Callable[[object], None]  # a candidate model beside the live one, or stop (edge.shadow); it replies
    switch_model: Callable[[str, object], None]  # promote or rollback (edge.promotion); it replies


def apply_command(controls: Controls, command: Command) -> None:
    """Act on a validated command other than a trigger (the main loop's own), between two frames."""
    name, args = command.name, command.args
    if name == "threshold":
        apply_threshold(controls.inspector(), args, controls.report, controls.cfg().storage.dir, command.origin)
    elif name == "threshold_reset":
        reset_threshold(controls.inspector(), controls.cfg(), args, controls.report, command.origin)
    elif name in ("mask", "mask_reset"):
        handler = apply_mask if name == "mask" else reset_mask
        handler(controls.inspector(), args, controls.report, controls.cfg().storage.dir, command.origin)
    elif name == "feedback":
        controls.feedback(args)  # written on the feedback thread, not here
    elif name == "reload":
        controls.reload(args.request_id)
    elif name == "shadow":
        controls.shadow(args)
    elif name in ("promote", "rollback"):
        controls.switch_model(name, args)


def apply_threshold(inspector: Inspector, args, report, storage_dir: Path, origin: str = "mqtt") -> None:
    """Act on a validated threshold command: within the model's range it is stored in storage.dir (so reloads
    and restarts keep it), applies from the next frame and is reported (edge.publish.reporter); outside it, or
    when it cannot be stored, the reply refuses it and says why. Each stored change is a row of the threshold
    audit (edge.threshold_audit), with ``origin`` as who made it."""
    reason = inspector.calibration.threshold_problem(args.threshold, inspector.bundle.name)
    if reason is None:
        try:
            save_threshold(storage_dir, args.threshold, model_ref(inspector.bundle), origin)
        except (OSError, ValueError) as exc:
            reason = f"cannot store the threshold in {threshold_path(storage_dir)}: {one_line(str(exc))}"
    if reason is not None:
        logger.warning("command 'threshold' refused: %s", reason)
        report.reply("threshold", False, reason, args.request_id)
        return
    old = inspector.threshold
    inspector.set_threshold(args.threshold)
    record_change(storage_dir, origin, "set", old, args.threshold, args.why, model_ref(inspector.bundle)["sha256"])
    report.threshold_changed(old, args)


def reset_threshold(inspector: Inspector, cfg: Config, args, report, origin: str = "mqtt") -> None:
    """Clear the stored threshold: back to inference.threshold, else the bundle's calibrated one."""
    try:
        had_one = clear_threshold(cfg.storage.dir)
    except OSError as exc:
        reason = f"cannot remove {threshold_path(cfg.storage.dir)}: {one_line(str(exc))}"
        logger.warning("command 'threshold_reset' refused: %s", reason)
        report.reply("threshold_reset", False, reason, args.request_id)
        return
    old = inspector.threshold
    configured = cfg.inference.threshold
    inspector.set_threshold(configured if configured is not None else inspector.calibration.threshold)
    back_to = "inference.threshold" if configured is not None else f"bundle {inspector.bundle.name}"
    logger.info("threshold reset by command: %.6g -> %.6g (%s)%s", old, inspector.threshold, back_to,
                "" if had_one else "; none was stored")
    if had_one:
        record_change(cfg.storage.dir, origin, "reset", old, inspector.threshold, args.why, model_ref(inspector.bundle)["sha256"])
    report.stats()
    report.state()  # before the reply, so a reply means the state is current
    report.reply("threshold_reset", True, f"threshold {old:.6g} -> {inspector.threshold:.6g} ({back_to})",
                 args.request_id)


def apply_live_settings(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """The config to run after a reload, and the changed settings that wait for a restart (dotted names)."""
    update: dict[str, object] = {name: getattr(loaded, name) for name in LIVE_SECTIONS}
    for section, keys in LIVE_KEYS.items():
        live_values = {key: getattr(getattr(loaded, section), key) for key in keys}
        update[section] = getattr(running, section).model_copy(update=live_values)
    effective = running.model_copy(update=update)
    return effective, changed_settings(effective, loaded)


def changed_settings(before: Config, after: Config) -> list[str]:
    old, new = flat_settings(before.model_dump()), flat_settings(after.model_dump())
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def flat_settings(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class Reload:
    """What a reload would run: the config, its inspector, the changed settings that wait for a restart, and
    another model's stored threshold it did not apply (dropped once the reload is applied)."""

    cfg: Config
    inspector: Inspector
    restart_required: list[str]
    dropped: DroppedThreshold | None


def prepare_reload(config_path: Path, running: Config, running_password: str | None | bool,
                   source_grayscale: bool) -> Reload:
    """Read the config and load its model, without changing anything running (not even the stored threshold).

    ``running_password`` is the broker password in use, or False when no broker link runs. Raises on any problem.
    """
    loaded = load_config(config_path)
    cfg, restart_required = apply_live_settings(running, loaded)
    if running_password is not False and loaded.mqtt.enabled and resolve_mqtt_password(loaded.mqtt) != running_password:
        restart_required.append("mqtt.password")  # changed in its file, which the config's own keys do not show
    inspector, dropped = build_inspector(cfg)
    if source_grayscale and inspector.spec.color != "gray":
        raise StartupError(f"model {inspector.bundle.name} needs colour frames but the source was opened "
                           "in gray for the running model; restart to switch")
    return Reload(cfg, inspector, restart_required, dropped)


def reload_outcome(inspector: Inspector, restart_required: list[str], dropped: DroppedThreshold | None) -> str:
    """Log what a reload applied; the one-line reason for the reply."""
    reason = f"model {inspector.bundle.name}, threshold {inspector.threshold:.6g}"
    if dropped is not None:
        whose = dropped.model["name"] or dropped.model["sha256"] or "no model"
        reason += f"; stored threshold {dropped.threshold:g} (set for {whose}) dropped: not this model's"
    if restart_required:
        reason += f"; running values kept until a restart for: {', '.join(restart_required)}"
        logger.warning("reload: changed settings that need a restart: %s", ", ".join(restart_required))
    logger.info("reloaded: %s", reason)
    return reason


def reload_refusal(exc: Exception) -> str:
    """Log why a reload was refused; the one-line reason for the reply and state."""
    if isinstance(exc, (ConfigError, StartupError)):
        reason = one_line(str(exc))
        logger.error("reload refused, keeping the running config and model: %s", reason)
    else:
        reason = one_line(f"{type(exc).__name__}: {exc}")
        logger.exception("reload failed, keeping the running config and model")
    return reason
