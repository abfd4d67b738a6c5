"""`lineguard run`: capture -> inspect -> verdict -> outbox -> MQTT, and every other sink.

One main loop does the inspection; signals and MQTT callbacks only queue work for it. Verdicts are written to
the durable outbox before they are published, and leave it only on PUBACK (edge.publish.recorder). Sinks
(edge.publish.sinks) get each verdict on threads of their own. Reload (SIGHUP or the MQTT `reload` command) is
validated before anything changes (edge.control). A threshold set by command is stored and outlasts reloads.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from edge.config.errors import ConfigError
from edge.config.load import load_config
from edge.config.schema import Config
from edge.control import CommandQueue, apply_command, prepare_reload, reload_outcome, reload_refusal
from edge.errors import StartupError, StorageError
from edge.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_TEMPFAIL
from edge.io.plant import PlantIo
from edge.io.triggers import Trigger, TriggerDesk, frame_after
from edge.notify import SystemdNotifier
from edge.publish.sender import OutboxSender
from edge.publish.outputs import build_sinks
from edge.publish.recorder import VerdictRecorder
from edge.publish.reporter import Reporter
from edge.publish.sinks import FanOut, VerdictSink
from edge.startup import broker_link, build_inspector, open_evidence, open_frames, open_outbox, start_link
from edge.station import Station
from edge.status import StationStatus
from edge.web.station import StationWeb

logger = logging.getLogger("lineguard")

IDLE_WAIT_S = 0.5  # longest the loop waits for a frame or command before it checks in again
FIRST_CONNECT_WAIT_S = 3.0  # bounded, so a broker that swallows packets cannot hold up inspection


class Daemon:
    """Lifecycle and the frame loop. ``sinks`` are extra outputs besides the configured ones."""

    def __init__(self, cfg: Config, config_path: Path, max_frames: int | None = None,
                 drain_timeout_s: float | None = None, debug: bool = False, sinks: list[VerdictSink] = ()) -> None:
        self.cfg, self.config_path, self.debug, self.max_frames = cfg, config_path, debug, max_frames
        self.drain_timeout_override_s = drain_timeout_s  # --drain-timeout outlives reloads
        self.extra_sinks = list(sinks)
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.notifier = SystemdNotifier()
        self.status = StationStatus()
        self.report = Reporter(self)
        self.commands = CommandQueue(self.report.reply)
        self.triggers = TriggerDesk(self.commands, self.report)  # from MQTT, Modbus and GPIO: queued or busy
        self.io = PlantIo(cfg.io, self.triggers, self.status)
        self.link = self.sender = self.source = self.station = None
        self.web = StationWeb(self)  # the station page (edge.web), its live-view sink, feedback and /metrics

    # --- start-up and shutdown, in reverse order of each other ---

    def start(self) -> None:
        cfg, base_topic = self.cfg, f"{self.cfg.mqtt.topic_prefix}/{self.cfg.device_id}"
        inspector = build_inspector(cfg)  # what a person must fix (exit 78) before what may pass (exit 75)
        outbox, self.evidence = open_outbox(cfg), open_evidence(cfg.storage)
        self.io.start()  # a Modbus port or GPIO line it cannot have stops start-up here (exit 78)
        self.source_grayscale = inspector.spec.color == "gray"
        self.source = open_frames(cfg, self.source_grayscale, self._on_source_state)
        if cfg.mqtt.enabled:
            self.link = broker_link(cfg, base_topic, self.commands.on_command, self._on_connection)
        fanout = FanOut(build_sinks(lambda: self.cfg, self.link, self.evidence,
                                    [self.io.sink, *self.extra_sinks, *self.web.sinks]))
        if self.link is not None:
            self.sender = OutboxSender(self.link, outbox, window=cfg.mqtt.max_inflight, on_delivered=fanout.delivered)
        recorder = VerdictRecorder(outbox, base_topic, self.link, self.sender)
        self.station = Station(cfg, inspector, recorder, fanout, self.status)
        self.web.start()  # and Prometheus metrics: before the link starts, so its first connection counts
        if self.link is not None:
            start_link(self.link)
            self.sender.start()
            # A broker that answers at once gets the first frames' heatmaps and status too
            # (those are not queued); an absent one delays start-up by one failed attempt.
            self.link.wait_first_attempt(FIRST_CONNECT_WAIT_S)
        logger.info("ready: model %s (threshold %.6g), source %s, %d message(s) pending from earlier",
                    inspector.bundle.name, inspector.threshold, cfg.source.kind, outbox.depth())
        self.notifier.ready(f"inspecting with {inspector.bundle.name}")

    def shutdown(self, clean: bool) -> None:
        self.notifier.stopping()
        self.web.stop()
        if self.source is not None:
            self.source.close()
        if self.station is not None:
            self.station.fanout.close()
        if self.sender is not None:
            self.sender.stop()
        if self.link is not None:
            self.report.final(clean)
            self.link.stop(clean=clean)
        if self.station is not None:
            self.station.recorder.outbox.close()

    # --- callbacks from other threads: they only queue work or publish ---

    def _on_source_state(self, state: str, detail: str) -> None:
        self.status.source_state, self.status.source_detail = state, detail
        self.io.source_changed(state)
        # A finite replay's end is normal; a live source away is worth a warning in the journal.
        (logger.info if state in ("running", "ended") else logger.warning)("source %s %s", state, detail)
        self.notifier.status(f"source {state} {detail}".strip())
        self.report.state()

    def _on_connection(self, connected: bool, detail: str) -> None:
        if connected:
            self.report.connected()  # discovery and state: changes while disconnected were dropped

    # --- the main loop ---

    def run(self) -> int:
        self.station.fanout.started()
        next_stats_s = time.monotonic() + self.cfg.mqtt.stats_interval_s
        while not self.stop.is_set():
            if self.reload_requested.is_set():
                self._reload(request_id=None)
            triggered = self.cfg.trigger.mode != "continuous"  # a reload may change it
            command = self.commands.next(IDLE_WAIT_S if triggered else None)
            if command is not None and command.name != "trigger":
                self._apply(command)
                continue
            if command is None and triggered:
                self.notifier.ping()  # waiting for a trigger is healthy: the loop itself is alive
            elif not self._inspect_next(command.args if command is not None else None):
                return self._finish_replay()
            next_stats_s = self.report.stats_if_due(next_stats_s)
            if self.max_frames and self.status.counters.frames >= self.max_frames:
                return self._finish_replay()
        return EX_OK

    def _inspect_next(self, trigger: Trigger | None) -> bool:
        """Inspect the next frame (for a trigger: the first captured after it); False when a replay has ended."""
        timing = self.cfg.trigger
        frame, skipped = (self.source.read(IDLE_WAIT_S), 0) if trigger is None else frame_after(
            self.source, trigger, timing.delay_ms / 1000.0, timing.timeout_s, self.stop)
        seq = self.station.inspect(frame, trigger.part_id if trigger else None) if frame is not None else None
        if trigger is not None:
            self.triggers.answer(trigger, frame, seq, skipped)  # before a replay's end: every trigger is answered
        if frame is None and self.source.exhausted:
            return False
        # Also without a frame: a camera that is away is the grabber's to reconnect, not systemd's to restart.
        self.notifier.ping()
        return True

    def _apply(self, command) -> None:
        apply_command(self, command)

    def _reload(self, request_id: str | None) -> None:
        """Re-read config and model; keep the running ones unless both are valid. Runs between two frames."""
        self.reload_requested.clear()
        self.notifier.reloading()
        password = self.link.password if self.link is not None else False
        try:
            cfg, inspector, restart_required = prepare_reload(self.config_path, self.cfg, password,
                                                              self.source_grayscale)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the running model keeps inspecting
            self.status.last_reload_error = reload_refusal(exc)
            self.report.reloaded("reload refused; running the previous config and model", False,
                                 self.status.last_reload_error, request_id)
            return
        self.cfg = cfg
        self.station.switch_to(cfg, inspector)
        self.status.last_reload_error, self.status.restart_required = None, restart_required
        self.evidence.quota_bytes = int(cfg.storage.evidence_quota_mb * 1e6)
        self.apply_log_level()
        reason = reload_outcome(inspector, restart_required)
        self.report.reloaded(f"inspecting with {inspector.bundle.name}", True, reason, request_id)

    def apply_log_level(self) -> None:
        """-v outranks the configured log_level, also after a reload."""
        logging.getLogger().setLevel(logging.DEBUG if self.debug else self.cfg.log_level.upper())

    def _finish_replay(self) -> int:
        """A finite replay ended: deliver what is pending (bounded), then exit."""
        timeout_s = self.drain_timeout_override_s
        self.station.recorder.drain(self.cfg.storage.drain_timeout_s if timeout_s is None else timeout_s)
        c = self.status.counters
        logger.info("replay finished: %d frames, %d pass, %d fail", c.frames, c.passed, c.failed)
        self.web.serve_after_replay()
        return EX_OK


def install_signal_handlers(daemon: Daemon) -> None:
    """Signals only set events; the main loop acts on them."""
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop.set())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_requested.set())


def run_from_config(config_path: Path, max_frames: int | None = None, drain_timeout_s: float | None = None,
                    debug: bool = False, sinks: list[VerdictSink] = (), keep_serving: bool = False) -> int:
    """`lineguard run`: ``debug`` (the -v flag) logs at debug level whatever log_level says; ``keep_serving``
    (--keep-serving) does what web.keep_serving_after_replay does."""
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    daemon = Daemon(cfg, config_path, max_frames=max_frames, drain_timeout_s=drain_timeout_s, debug=debug,
                    sinks=sinks)
    daemon.web.keep_serving = keep_serving or cfg.web.keep_serving_after_replay  # --keep-serving outlives reloads
    daemon.apply_log_level()
    install_signal_handlers(daemon)
    try:
        daemon.start()
    except (StartupError, ConfigError) as exc:
        logger.error("cannot start: %s", exc)
        return EX_CONFIG
    except StorageError as exc:
        logger.error("cannot start: %s (exit 75: systemd starts it again after a delay)", exc)
        return EX_TEMPFAIL
    code = EX_SOFTWARE
    try:
        code = daemon.run()
    finally:
        daemon.shutdown(clean=True)
    return code
