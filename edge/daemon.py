"""`lineguard run`: capture -> preprocess -> model -> score -> verdict -> outbox -> MQTT.

One main loop does the inspection; signals and MQTT callbacks only queue work for it. Verdicts are written to
the durable outbox before they are published, and leave it only on PUBACK. If the outbox cannot be written
(disk full), verdicts are published directly at QoS 1 without durability, and stats count it.

Reload (SIGHUP or the MQTT `reload` command) re-reads the config and loads the model it names; both are
validated before anything changes, and on any error the running config and model stay. A reload applies
LIVE_SECTIONS and LIVE_KEYS at once. Every other setting (device_id, source, the broker connection, storage.dir
and the outbox) keeps its running value until a restart: the reply, the log, stats and the retained state
topic name the changed settings that wait for one. A threshold set by command lasts until the next reload.
"""
from __future__ import annotations

import atexit
import json
import logging
import queue
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from edge.core.bundle import BundleError
from edge.capture.base import CaptureError, FrameSource
from edge.capture.registry import open_source, preflight_source
from edge.commands import Command, CommandRefused, TriggerCommand, parse_command, request_id_of
from edge.config.errors import ConfigError
from edge.config.load import load_config
from edge.config.schema import Config
from edge.config.secrets import resolve_mqtt_password
from edge.publish.evidence import EvidenceStore
from edge.core.inspector import Inspection, Inspector
from edge.publish.mqtt import MqttLink
from edge.publish.sender import OutboxSender
from edge.notify import SystemdNotifier
from edge.publish.outbox import Outbox, OutboxError
from edge.core.preprocess import ImageError, read_image, to_uint8
from edge.core.runtime import ModelLoadError
from edge.core.scoring import heat_colors

logger = logging.getLogger("lineguard")

EX_OK = 0
EX_SOFTWARE = 70
EX_CONFIG = 78
IDLE_WAIT_S = 0.5  # longest the loop waits for a frame or command before it checks in again
LATENCY_WINDOW = 2048
OVERLAY_MIN_SIDE_PX = 256
CPU_TEMP_PATH = Path("/sys/class/thermal/thermal_zone0/temp")
OUTBOX_FILE = "outbox.sqlite3"
FIRST_CONNECT_WAIT_S = 3.0  # bounded, so a broker that swallows packets cannot hold up inspection
EVIDENCE_QUEUE_FRAMES = 16  # failed frames whose evidence files may wait for the writer thread
# What a reload changes while inspecting: whole sections, and single keys of the others.
LIVE_SECTIONS = ("model", "log_level", "inference", "alerts", "trigger")
LIVE_KEYS = {"mqtt": ("heatmap", "stats_interval_s"), "storage": ("evidence", "evidence_quota_mb", "drain_timeout_s")}


class StartupError(Exception):
    """Config, bundle or source problem found before inspecting: exit 78, systemd does not restart."""


@dataclass
class OutboxHealth:
    """Writes to the outbox that failed, and what became of their messages."""

    errors: int = 0
    last_error: str | None = None
    published_directly: int = 0  # sent at QoS 1 without durability
    lost: int = 0  # could not be sent either: broker unreachable too


@dataclass
class Counters:
    frames: int = 0
    passed: int = 0
    failed: int = 0
    alerts: int = 0
    errors: int = 0
    unscorable: int = 0  # frames the quality gate refused to judge


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cpu_temperature_c() -> float | None:
    try:
        return int(CPU_TEMP_PATH.read_text()) / 1000.0
    except (OSError, ValueError):
        return None


def build_inspector(cfg: Config) -> Inspector:
    """The bundle and the device's ROI, ignore mask and threshold override; StartupError on any problem."""
    mask = None
    try:
        if cfg.inference.ignore_mask is not None:
            mask = read_image(cfg.inference.ignore_mask, "gray")
        roi = tuple(cfg.inference.roi) if cfg.inference.roi else None
        return Inspector(cfg.model, threads=cfg.inference.threads, roi=roi, ignore_mask=mask,
                         ignore_polygons=cfg.inference.ignore_polygons, threshold=cfg.inference.threshold,
                         min_region_px=cfg.inference.min_region_px, quality_gate=cfg.inference.quality_gate)
    except (BundleError, ModelLoadError, ImageError) as exc:
        raise StartupError(one_line(str(exc))) from None


def preflight(cfg: Config) -> list[str]:
    """What `run` would refuse at start-up, found without opening a camera or a broker connection."""
    problems = []
    try:
        build_inspector(cfg)
    except StartupError as exc:
        problems.append(f"model: {exc}")
    if cfg.mqtt.enabled:
        try:
            MqttLink(cfg.mqtt, "check", client_id=cfg.mqtt_client_id,
                     password=resolve_mqtt_password(cfg.mqtt)).check_files()
        except ConfigError as exc:
            problems.append(one_line(str(exc)))
        except (OSError, ValueError) as exc:
            problems.append(f"mqtt.tls: {one_line(str(exc))}")
    return problems + preflight_source(cfg.source)


def one_line(text: str) -> str:
    """Runtime and YAML messages can span lines; log lines, replies and STATUS= must not."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


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


class EvidenceWriter:
    """Saves evidence files on a thread of its own, in order, so disk writes overlap the next inspection.

    A full queue makes the caller wait, so evidence is never dropped; files still queued at exit are written
    before the process ends.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=EVIDENCE_QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)
        self._thread.start()
        atexit.register(self._queue.join)

    def submit(self, store: EvidenceStore, stem: str, images: dict[str, np.ndarray]) -> None:
        self._queue.put((store, stem, images))

    def _run(self) -> None:
        while True:
            store, stem, images = self._queue.get()
            try:
                store.save(stem, images)
            except Exception:  # save() handles disk errors itself; anything else must not stop the writer
                logger.exception("evidence %s not saved", stem)
            finally:
                self._queue.task_done()


class AlertDebounce:
    """Alert when at least n of the last m frames failed."""

    def __init__(self, n: int, m: int) -> None:
        self.n = n
        self.recent: deque[bool] = deque(maxlen=m)

    def update(self, failed: bool) -> bool:
        self.recent.append(failed)
        return failed and sum(self.recent) >= self.n


class Daemon:
    def __init__(self, cfg: Config, config_path: Path, max_frames: int | None = None,
                 drain_timeout_s: float | None = None, debug: bool = False) -> None:
        self.debug = debug
        self.cfg = cfg
        self.config_path = config_path
        self.max_frames = max_frames
        self.drain_timeout_override_s = drain_timeout_s  # --drain-timeout outlives reloads
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=64)
        self.notifier = SystemdNotifier()
        self.counters = Counters()
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.started_s = time.monotonic()
        self.base_topic = f"{cfg.mqtt.topic_prefix}/{cfg.device_id}"
        self.link: MqttLink | None = None
        self.sender: OutboxSender | None = None
        self.source: FrameSource | None = None
        self.source_state = "starting"
        self.source_detail = ""
        self.last_reload_error: str | None = None
        self.restart_required: list[str] = []
        self.last_seq = 0
        self.outbox_health = OutboxHealth()

    # --- start-up and shutdown, in reverse order of each other ---

    def start(self) -> None:
        storage = self.cfg.storage.dir
        try:
            storage.mkdir(parents=True, exist_ok=True)
            self.outbox = Outbox(storage / OUTBOX_FILE, self.cfg.storage.outbox_max_messages,
                                 self.cfg.storage.outbox_when_full, self.cfg.storage.sync)
            self.last_seq = self.outbox.next_seq() - 1  # see _reserve_seq
        except (OSError, OutboxError) as exc:
            raise StartupError(f"storage.dir {storage}: {exc}") from None
        self.inspector = build_inspector(self.cfg)
        self.evidence = EvidenceStore(storage / "evidence", int(self.cfg.storage.evidence_quota_mb * 1e6))
        self.debounce = AlertDebounce(self.cfg.alerts.debounce_n, self.cfg.alerts.debounce_m)
        self.source_grayscale = self.inspector.spec.color == "gray"
        try:
            self.source = open_source(self.cfg.source, self.source_grayscale, self._on_source_state)
        except CaptureError as exc:
            raise StartupError(str(exc)) from None
        if self.cfg.mqtt.enabled:
            self.link = MqttLink(self.cfg.mqtt, self.base_topic, self._on_command, self._on_connection,
                                 client_id=self.cfg.mqtt_client_id, password=resolve_mqtt_password(self.cfg.mqtt))
            self.sender = OutboxSender(self.link, self.outbox, window=self.cfg.mqtt.max_inflight)
            try:
                self.link.start()  # a bad certificate or key file fails here, before any connection
            except (OSError, ValueError) as exc:
                raise StartupError(f"mqtt.tls: {one_line(str(exc))}") from None
            self.sender.start()
            # A broker that answers at once gets the first frames' heatmaps and status too
            # (those are not queued); an absent one delays start-up by one failed attempt.
            self.link.wait_first_attempt(FIRST_CONNECT_WAIT_S)
        pending = self.outbox.depth()
        logger.info("ready: model %s (threshold %.6g), source %s, %d message(s) pending from earlier",
                    self.inspector.bundle.name, self.inspector.threshold, self.cfg.source.kind, pending)
        self.notifier.ready(f"inspecting with {self.inspector.bundle.name}")

    def shutdown(self, clean: bool) -> None:
        self.notifier.stopping()
        if self.source is not None:
            self.source.close()
        if self.sender is not None:
            self.sender.stop()
        if self.link is not None:
            self._publish_stats()
            self.link.stop(clean=clean)
        self.outbox.close()

    # --- callbacks from other threads: they only queue work ---

    def _on_source_state(self, state: str, detail: str) -> None:
        self.source_state, self.source_detail = state, detail
        # A finite replay's end is normal; a live source away is worth a warning in the journal.
        log = logger.info if state in ("running", "ended") else logger.warning
        log("source %s %s", state, detail)
        self.notifier.status(f"source {state} {detail}".strip())
        self._publish_state()

    def _on_connection(self, connected: bool, detail: str) -> None:
        logger.debug("broker %s %s", "connected" if connected else "disconnected", detail)  # MqttLink logs it
        if connected:
            self._publish_state()  # changes while disconnected were dropped, and the retained one may be stale

    def _on_command(self, name: str, payload: bytes) -> None:
        try:
            command = parse_command(name, payload)
            self.commands.put_nowait(command)
        except CommandRefused as exc:
            logger.warning("command %r refused: %s", name[:64], exc)
            self._reply(name, False, str(exc), request_id_of(payload))
        except queue.Full:
            self._reply(name, False, "busy: too many queued commands", request_id_of(payload))

    def _reply(self, command: str, ok: bool, reason: str, request_id: str | None) -> None:
        if self.link is not None:
            self._publish_json("reply", {"command": command[:64], "ok": ok, "reason": reason,
                                         "request_id": request_id, "ts": utc_now()})

    def _publish_json(self, subtopic: str, data: dict, retain: bool = False) -> None:
        self.link.publish(subtopic, json.dumps(data, separators=(",", ":")), qos=1, retain=retain)

    def _publish_state(self) -> None:
        """The retained <base>/state: source health, running model and threshold, reload outcome."""
        if self.link is None or not hasattr(self, "inspector"):
            return
        bundle = self.inspector.bundle
        self._publish_json("state", {
            "source": self.source_state, "detail": self.source_detail,
            "model": {"name": bundle.name, "sha256": bundle.model_sha256}, "threshold": self.inspector.threshold,
            "last_reload_error": self.last_reload_error, "restart_required": self.restart_required, "ts": utc_now(),
        }, retain=True)

    # --- the main loop ---

    def run(self) -> int:
        next_stats_s = time.monotonic() + self.cfg.mqtt.stats_interval_s
        while not self.stop.is_set():
            if self.reload_requested.is_set():
                self._reload(request_id=None)
            triggered = self.cfg.trigger.mode == "mqtt"  # a reload may change it
            trigger, wait_s = None, IDLE_WAIT_S
            command = self._next_command(block=triggered)
            if command is not None and command.name != "trigger":
                self._apply(command)
                continue
            if command is not None:
                trigger, wait_s = command.args, self.cfg.trigger.timeout_s
            elif triggered:
                self.notifier.ping()  # waiting for a trigger is healthy: the loop itself is alive
                next_stats_s = self._maybe_stats(next_stats_s)
                continue
            frame = self.source.read(wait_s)
            if frame is None:
                if self.source.exhausted:
                    return self._finish_replay()
                if trigger is not None:
                    self._reply("trigger", False, "no frame from the source in time", trigger.request_id)
                # The loop is alive; a camera that is away is the grabber's to reconnect, not systemd's to restart.
                self.notifier.ping()
                next_stats_s = self._maybe_stats(next_stats_s)
                continue
            seq = self._inspect(frame, trigger.part_id if trigger is not None else None)
            if trigger is not None:
                self._answer_trigger(trigger, frame.name, seq)
            self.notifier.ping()
            next_stats_s = self._maybe_stats(next_stats_s)
            if self.max_frames and self.counters.frames >= self.max_frames:
                return self._finish_replay()
        return EX_OK

    def _answer_trigger(self, trigger: TriggerCommand, frame_name: str, seq: int | None) -> None:
        if seq is None:
            self._reply("trigger", False, f"frame {frame_name} could not be inspected", trigger.request_id)
        else:
            self._reply("trigger", True, f"inspected as seq {seq}", trigger.request_id)

    def _next_command(self, block: bool) -> Command | None:
        try:
            return self.commands.get(timeout=IDLE_WAIT_S) if block else self.commands.get_nowait()
        except queue.Empty:
            return None

    def _apply(self, command: Command) -> None:
        """Act on a validated threshold or reload command (a trigger is the main loop's own)."""
        args = command.args
        if command.name == "threshold":
            old = self.inspector.threshold
            self.inspector.set_threshold(args.threshold)
            logger.info("threshold changed by command: %.6g -> %.6g", old, args.threshold)
            self._reply("threshold", True, f"threshold {old:.6g} -> {args.threshold:.6g}", args.request_id)
            self._publish_stats()
            self._publish_state()
        elif command.name == "reload":
            self._reload(args.request_id)

    def _reload(self, request_id: str | None) -> None:
        """Re-read config and model; keep the running ones unless both are valid. Runs between two frames."""
        self.reload_requested.clear()
        self.notifier.reloading()
        try:
            loaded = load_config(self.config_path)
            cfg, restart_required = apply_live_settings(self.cfg, loaded)
            restart_required += self._changed_credentials(loaded)
            inspector = build_inspector(cfg)
            self._check_source_fits(inspector)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the running model keeps inspecting
            self._refuse_reload(exc, request_id)
            return
        self._switch_to(cfg, inspector, restart_required)
        reason = f"model {inspector.bundle.name}, threshold {inspector.threshold:.6g}"
        if restart_required:
            reason += f"; running values kept until a restart for: {', '.join(restart_required)}"
            logger.warning("reload: changed settings that need a restart: %s", ", ".join(restart_required))
        logger.info("reloaded: %s", reason)
        self._after_reload(f"inspecting with {inspector.bundle.name}")
        self._reply("reload", True, reason, request_id)  # after the new state, so a reply means it is current

    def _changed_credentials(self, loaded: Config) -> list[str]:
        """A password changed in its file, which the config's own keys do not show."""
        if self.link is None or not loaded.mqtt.enabled:
            return []
        return ["mqtt.password"] if resolve_mqtt_password(loaded.mqtt) != self.link.password else []

    def _check_source_fits(self, inspector: Inspector) -> None:
        if self.source_grayscale and inspector.spec.color != "gray":
            raise StartupError(f"model {inspector.bundle.name} needs colour frames but the source was opened "
                               "in gray for the running model; restart to switch")

    def _refuse_reload(self, exc: Exception, request_id: str | None) -> None:
        if isinstance(exc, (ConfigError, StartupError)):
            reason = one_line(str(exc))
            logger.error("reload refused, keeping the running config and model: %s", reason)
        else:
            reason = one_line(f"{type(exc).__name__}: {exc}")
            logger.exception("reload failed, keeping the running config and model")
        self.last_reload_error = reason
        self._after_reload("reload refused; running the previous config and model")
        self._reply("reload", False, reason, request_id)

    def _switch_to(self, cfg: Config, inspector: Inspector, restart_required: list[str]) -> None:
        alerts_changed = cfg.alerts != self.cfg.alerts
        self.cfg, self.inspector = cfg, inspector
        self.last_reload_error, self.restart_required = None, restart_required
        if alerts_changed:
            self.debounce = AlertDebounce(cfg.alerts.debounce_n, cfg.alerts.debounce_m)
        self.evidence.quota_bytes = int(cfg.storage.evidence_quota_mb * 1e6)
        self.apply_log_level()

    def apply_log_level(self) -> None:
        logging.getLogger().setLevel(logging.DEBUG if self.debug else self.cfg.log_level.upper())

    def _after_reload(self, status: str) -> None:
        self.notifier.ready(status)
        self._publish_stats()
        self._publish_state()

    def _inspect(self, frame, part_id: str | None) -> int | None:
        """Inspect, store and publish one frame; its verdict's seq, or None when it could not be inspected."""
        try:
            result = self.inspector.inspect(frame.image, bgr=frame.image.ndim == 3)
        except ImageError as exc:
            self.counters.errors += 1
            logger.error("frame %s not inspected: %s", frame.name, exc)
            return None
        latency_ms = (time.monotonic() - frame.arrival_s) * 1000.0
        self.latencies_ms.append(latency_ms)
        failed = result.verdict == "fail"
        self.counters.frames += 1
        self.counters.failed += failed
        self.counters.passed += result.verdict == "pass"
        self.counters.unscorable += result.verdict == "unscorable"
        alert = self.debounce.update(failed)
        seq = self._reserve_seq()
        payload = self._result_payload(seq, frame.name, part_id, result, latency_ms)
        messages = [(f"{self.base_topic}/result", payload, 1)]
        if alert:
            self.counters.alerts += 1
            messages.append((f"{self.base_topic}/alert", payload, 1))
        self._store(seq, messages)
        logger.info("%s %-4s score %.4g (norm %.3f)%s", frame.name, result.verdict.upper(), result.score,
                    result.score_norm, f" part {part_id}" if part_id else "")
        self._evidence_and_heatmap(seq, frame, result, failed)
        return seq

    def _reserve_seq(self) -> int:
        """The next verdict's seq. Outbox.put records it with the verdict, in one transaction, so a kill
        between two frames leaves no gap in the seqs a receiver sees."""
        self.last_seq += 1
        return self.last_seq

    def _store(self, seq: int, messages: list[tuple[str, bytes, int]]) -> None:
        """Queue one verdict's messages durably; if the outbox cannot be written, publish them directly."""
        try:
            self.outbox.put(seq, messages)
        except OutboxError as exc:
            self._outbox_write_failed(exc)
            self._publish_undurable(messages)
            return
        if self.outbox_health.last_error is not None:
            logger.warning("outbox writable again after %d failed write(s); verdicts are durable again",
                           self.outbox_health.errors)
            self.outbox_health.last_error = None
        if self.sender is not None:
            self.sender.wake()

    def _outbox_write_failed(self, exc: OutboxError) -> None:
        health = self.outbox_health
        if health.last_error is None:
            logger.error("outbox cannot be written (%s); publishing verdicts directly at QoS 1, without "
                         "durability, until it can (they may overtake older queued ones; seq orders them)", exc)
        health.errors += 1
        health.last_error = one_line(str(exc))

    def _publish_undurable(self, messages: list[tuple[str, bytes, int]]) -> None:
        for topic, payload, qos in messages:
            subtopic = topic.removeprefix(f"{self.base_topic}/")
            if self.link is not None and self.link.publish(subtopic, payload, qos=qos):
                self.outbox_health.published_directly += 1
            else:
                self.outbox_health.lost += 1

    def _result_payload(self, seq: int, image: str, part_id: str | None, result: Inspection, latency_ms: float) -> bytes:
        bundle = self.inspector.bundle
        return json.dumps({
            "id": uuid.uuid4().hex, "seq": seq, "ts": utc_now(), "device_id": self.cfg.device_id,
            "image": image, "part_id": part_id, "score": result.score, "score_norm": round(result.score_norm, 6),
            "threshold": result.threshold, "verdict": result.verdict, "reason": result.reason,
            "regions": result.regions, "model": {"name": bundle.name, "sha256": bundle.model_sha256}, "latency_ms": round(latency_ms, 3),
        }, separators=(",", ":")).encode()

    def _evidence_and_heatmap(self, seq: int, frame, result: Inspection, failed: bool) -> None:
        wanted = {"always": True, "fail": failed, "never": False}
        publish = self.link is not None and wanted[self.cfg.mqtt.heatmap]
        save = wanted[self.cfg.storage.evidence]
        if not (publish or save):
            return
        image = to_uint8(frame.image)  # 16-bit frames are shown and saved as 8-bit
        overlay = self._overlay(image, result)
        if publish:
            ok, jpeg = cv2.imencode(".jpg", overlay)
            if ok:
                self.link.publish("heatmap", jpeg.tobytes(), qos=0)
        if save:
            if getattr(self, "evidence_writer", None) is None:
                self.evidence_writer = EvidenceWriter()
            self.evidence_writer.submit(self.evidence, f"{seq:09d}-{Path(frame.name).stem}",
                                        {"": image, "-heat": overlay})

    def _overlay(self, image: np.ndarray, result: Inspection) -> np.ndarray:
        """Frame and heatmap blended, colours anchored to the pixel threshold."""
        colors = heat_colors(result.heat, self.inspector.calibration.pixel_threshold)
        spec = self.inspector.spec
        base = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
        base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR) if base.ndim == 2 else base
        blended = cv2.addWeighted(base, 0.5, colors, 0.5, 0)
        factor = max(1, OVERLAY_MIN_SIDE_PX // max(spec.width, spec.height))
        return cv2.resize(blended, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor > 1 else blended

    # --- stats and the end of a replay ---

    def stats(self) -> dict:
        latencies = np.fromiter(self.latencies_ms, dtype=float)
        uptime = time.monotonic() - self.started_s
        p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]).round(3).tolist() if latencies.size else [None] * 3)
        source = self.source.stats() if self.source is not None else {}
        return {
            "ts": utc_now(), "device_id": self.cfg.device_id, "uptime_s": round(uptime, 1),
            "frames": self.counters.frames, "pass": self.counters.passed, "fail": self.counters.failed,
            "unscorable": self.counters.unscorable,
            "alerts": self.counters.alerts, "errors": self.counters.errors, "dropped": source.get("dropped", 0),
            "fps": round(self.counters.frames / uptime, 2) if uptime > 0 else 0.0,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "outbox": {"depth": self.outbox.depth(), "dropped": self.outbox.dropped, **asdict(self.outbox_health)},
            "last_seq": self.last_seq,
            "delivered": self.sender.delivered if self.sender else 0,
            "source": source, "evidence": self.evidence.stats(),
            "mqtt_connected": bool(self.link and self.link.connected),
            "model": {"name": self.inspector.bundle.name, "sha256": self.inspector.bundle.model_sha256},
            "threshold": self.inspector.threshold, "last_reload_error": self.last_reload_error,
            "restart_required": self.restart_required,
            "cpu_temp_c": cpu_temperature_c(),
        }

    def _publish_stats(self) -> None:
        if self.link is not None:
            self._publish_json("stats", self.stats())

    def _maybe_stats(self, next_due_s: float) -> float:
        now = time.monotonic()
        if now < next_due_s:
            return next_due_s
        self._publish_stats()
        return now + self.cfg.mqtt.stats_interval_s

    def _finish_replay(self) -> int:
        """A finite replay ended: deliver what is pending (bounded), then exit."""
        pending = self.outbox.depth()
        timeout = self.drain_timeout_override_s
        if timeout is None:
            timeout = self.cfg.storage.drain_timeout_s
        if pending and self.sender is not None:
            logger.info("replay finished; delivering %d pending message(s), waiting up to %.0f s", pending, timeout)
            if not self.sender.wait_drained(timeout):
                logger.warning("%d message(s) stay in the outbox for the next start", self.outbox.depth())
        logger.info("replay finished: %d frames, %d pass, %d fail", self.counters.frames,
                    self.counters.passed, self.counters.failed)
        return EX_OK


def install_signal_handlers(daemon: Daemon) -> None:
    """Signals only set events; the main loop acts on them."""
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop.set())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_requested.set())


def run_from_config(config_path: Path, max_frames: int | None = None, drain_timeout_s: float | None = None,
                    debug: bool = False) -> int:
    """`lineguard run`: ``debug`` (the -v flag) logs at debug level whatever log_level says."""
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    daemon = Daemon(cfg, config_path, max_frames=max_frames, drain_timeout_s=drain_timeout_s, debug=debug)
    daemon.apply_log_level()
    install_signal_handlers(daemon)
    try:
        daemon.start()
    except (StartupError, ConfigError) as exc:
        logger.error("cannot start: %s", exc)
        return EX_CONFIG
    code = EX_SOFTWARE
    try:
        code = daemon.run()
    finally:
        daemon.shutdown(clean=True)
    return code
