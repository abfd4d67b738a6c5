"""`lineguard run`: capture -> inspect -> verdict -> outbox -> MQTT, and every other sink.

One main loop does the inspection; signals and MQTT callbacks only queue work for it. Verdicts are written to
the durable outbox before they are published, and leave it only on PUBACK (edge.publish.recorder). Sinks
(edge.publish.sinks) get each verdict on threads of their own. Reload (SIGHUP or the MQTT `reload` command) is
validated before anything changes (edge.control). A threshold set by command is stored and outlasts reloads
of the same model.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from edge import station_lock
from edge.components import components
from edge.config.errors import ConfigError
from edge.config.load import load_config
from edge.config.schema import Config
from edge.control import CommandQueue, Controls, apply_command, prepare_reload, reload_outcome, reload_refusal
from edge.core.inspector import Inspector
from edge.errors import StartupError, StorageError
from edge.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_TEMPFAIL
from edge.io.plant import PlantIo
from edge.io.triggers import Trigger, TriggerDesk, frame_after
from edge.notify import SystemdNotifier
from edge.ports import listeners
from edge.publish import messages
from edge.publish.sender import OutboxSender
from edge.publish.outputs import OutputParts, build_sinks
from edge.publish.recorder import VerdictRecorder
from edge.publish.reporter import Reporter, ReporterView
from edge.publish.sinks import FanOut, VerdictSink
from edge.startup import (broker_link, build_inspector, drop_threshold, log_runtime, open_evidence, open_frames,
                          open_outbox, start_link)
from edge.promotion import switch_model
from edge.shadow import shadow_command
from edge.station import Station
from edge.status import StationStatus
from edge.web.station import PageView, StationWeb

logger = logging.getLogger("lineguard")

IDLE_WAIT_S = 0.5  # longest the loop waits for a frame or command before it checks in again
FIRST_CONNECT_WAIT_S = 3.0  # bounded, so a broker that swallows packets cannot hold up inspection


class Daemon:
    """Lifecycle and the frame loop. ``sinks`` are extra outputs besides the configured ones. The parts it runs
    get narrow views of it (built below the class), never the daemon itself."""

    def __init__(self, cfg: Config, config_path: Path, max_frames: int | None = None,
                 drain_timeout_s: float | None = None, debug: bool = False, sinks: list[VerdictSink] = ()) -> None:
        self.cfg, self.config_path, self.debug, self.max_frames = cfg, config_path, debug, max_frames
        self.drain_timeout_override_s = drain_timeout_s  # --drain-timeout outlives reloads
        self.extra_sinks = list(sinks)
        self.stop, self.reload_requested = threading.Event(), threading.Event()
        self.notifier = SystemdNotifier()
        self.status = StationStatus()
        self.report = Reporter(reporter_view(self))
        self.commands = CommandQueue(self.report.reply)
        self.triggers = TriggerDesk(self.commands, self.report)  # from MQTT, Modbus and GPIO: queued or busy
        self.io = PlantIo(cfg, self.triggers, self.status, lambda: _inspector(self))
        self.link = self.sender = self.source = self.station = self.evidence = self.lock = None
        self.web = StationWeb(page_view(self))  # the station page (edge.web), its live-view sink, feedback, /metrics
        self.controls = controls(self)

    # --- start-up and shutdown, in reverse order of each other ---

    def start(self) -> None:
        cfg, base_topic = self.cfg, messages.base_topic(self.cfg.mqtt.topic_prefix, self.cfg.device_id)
        inspector, dropped = build_inspector(cfg)  # what a person must fix (exit 78) before what may pass (75)
        self.lock = station_lock.take(cfg.storage.dir)  # one station per storage.dir: before anything writes there
        drop_threshold(dropped, self.status, inspector)
        outbox, self.evidence = open_outbox(cfg), open_evidence(cfg.storage)
        self.io.start()  # a Modbus or OPC UA port or a GPIO line it cannot have stops start-up here (exit 78)
        self.source_grayscale = inspector.spec.color == "gray"
        self.source = open_frames(cfg, self.source_grayscale, self._on_source_state)
        if cfg.mqtt.enabled:
            self.link = broker_link(cfg, base_topic, self.commands.on_command, self.report.on_connection)
        fanout = FanOut(build_sinks(OutputParts(lambda: self.cfg, self.link, self.evidence, outbox, self.status),
                                    plant=self.io.sink, page=self.web.sinks, extra=self.extra_sinks))
        if self.link is not None:
            self.sender = OutboxSender(self.link, outbox, window=cfg.mqtt.max_inflight, on_delivered=fanout.delivered)
        recorder = VerdictRecorder(outbox, base_topic, self.sender)
        self.station = Station(cfg, inspector, recorder, fanout, self.status)
        self.web.start()  # and Prometheus metrics: before the link starts, so its first connection counts
        if self.link is not None:
            start_link(self.link, self.sender)
            # An answering broker gets the first heatmaps (not queued) too; an absent one costs one attempt.
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
        station_lock.release(self.lock)

    # --- a callback from other threads: it only records, notifies and publishes ---

    def _on_source_state(self, state: str, detail: str) -> None:
        self.status.source_state, self.status.source_detail = state, detail
        self.io.source_changed(state)
        # A finite replay's end is normal; a live source away is worth a warning in the journal.
        (logger.info if state in ("running", "ended") else logger.warning)("source %s %s", state, detail)
        self.notifier.status(f"source {state} {detail}".strip())
        self.report.state()

    # --- the main loop ---

    def run(self) -> int:
        self.station.fanout.started()
        next_stats_s = time.monotonic() + self.cfg.mqtt.stats_interval_s
        serving = False  # a finite replay has ended and the page stays up: commands only, until stop
        while not self.stop.is_set():
            if self.reload_requested.is_set():
                self.reload(request_id=None)
            waits = serving or self.cfg.trigger.mode != "continuous"  # a reload may change the mode
            command = self.commands.next(IDLE_WAIT_S if waits else None)
            if command is not None and command.name != "trigger":
                apply_command(self.controls, command)
                continue
            if command is None and waits:
                self.notifier.ping()  # waiting for a trigger or a command is healthy: the loop itself is alive
            elif not self._inspect_next(command.args if command is not None else None) or (
                    self.max_frames and self.status.counters.frames >= self.max_frames):
                if not serving:  # the replay has just ended
                    serving = self._finish_replay()
                    if not serving:
                        return EX_OK
            next_stats_s = self.report.stats_if_due(next_stats_s)
        return EX_OK

    def _inspect_next(self, trigger: Trigger | None) -> bool:
        """Inspect the next frame (for a trigger: the first captured after it); False when a replay has ended."""
        timing = self.cfg.trigger
        frame, skipped = (self.source.read(IDLE_WAIT_S), 0) if trigger is None else frame_after(
            self.source, trigger, timing.delay_ms / 1000.0, timing.timeout_s, self.stop)
        seq = None
        try:
            seq = self.station.inspect(frame, trigger.part_id if trigger else None) if frame is not None else None
        finally:  # every trigger is answered: before a replay's end, and before a stop for storage (exit 75)
            if trigger is not None:
                self.triggers.answer(trigger, frame, seq, skipped)
        if frame is None and self.source.exhausted:
            return False
        # Also without a frame: a camera that is away is the grabber's to reconnect, not systemd's to restart.
        self.notifier.ping()
        return True

    def reload(self, request_id: str | None) -> None:
        """Re-read config and model; keep the running ones unless both are valid. Runs between two frames."""
        self.reload_requested.clear()
        self.notifier.reloading()
        password = self.link.password if self.link is not None else False
        try:
            loaded = prepare_reload(self.config_path, self.cfg, password, self.source_grayscale)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the running model keeps inspecting
            self.status.last_reload_error = reload_refusal(exc)
            self.notifier.ready("reload refused; running the previous config and model")
            self.report.reloaded(False, self.status.last_reload_error, request_id)
            return
        self.cfg = loaded.cfg
        self.station.switch_to(loaded.cfg, loaded.inspector)
        self.status.last_reload_error, self.status.restart_required = None, loaded.restart_required
        drop_threshold(loaded.dropped, self.status, loaded.inspector)
        self.evidence.quota_bytes = int(loaded.cfg.storage.evidence_quota_mb * 1e6)
        apply_log_level(self.debug, loaded.cfg)
        reason = reload_outcome(loaded.inspector, loaded.restart_required, loaded.dropped)
        self.notifier.ready(f"inspecting with {loaded.inspector.bundle.name}")
        self.report.reloaded(True, reason, request_id)

    def _finish_replay(self) -> bool:
        """A finite replay ended: deliver what is pending (bounded); True if the page keeps serving, False to exit."""
        timeout_s = self.drain_timeout_override_s
        self.station.recorder.drain(self.cfg.storage.drain_timeout_s if timeout_s is None else timeout_s)
        c = self.status.counters
        logger.info("replay finished: %d frames, %d pass, %d fail", c.frames, c.passed, c.failed)
        if self.web.keep_serving:
            logger.info("replay finished; the station page stays up at %s, and commands are taken, until SIGTERM "
                        "or Ctrl-C", self.web.url or "(web.enabled is false)")
            self.notifier.status("replay finished; serving the station page")
        return self.web.keep_serving


# --- the narrow views the parts get: only what each reads or calls, late-bound (most exist after start-up) ---

def _inspector(d: Daemon) -> Inspector | None:
    return d.station.inspector if d.station is not None else None


def _verdict(d: Daemon, seq: int) -> dict | None:
    last = d.station.last_verdict if d.station is not None else None
    return last if last is not None and last["seq"] == seq else None


def _broker_refusal(d: Daemon) -> str | None:
    """Why the broker counts as refusing: the station's results first, then the Sparkplug node's data."""
    node = d.station.fanout.find("sparkplug")
    refusals = (d.sender.refusal() if d.sender else None, node.refusal() if node is not None else None)
    return next((refusal for refusal in refusals if refusal is not None), None)


def station_stats(d: Daemon) -> dict:
    """The <base>/stats payload as of now, from any thread: also what /metrics and the station page show."""
    station, link, inspector = d.station, d.link, d.station.inspector
    source, outbox = d.source.stats() if d.source is not None else {}, station.recorder.stats()
    return messages.stats_payload(
        d.cfg.device_id, inspector.bundle, inspector.threshold, d.status, source=source, outbox=outbox,
        components=components(source, link, d.cfg.mqtt.enabled, outbox, inspector.bundle.name,
                              d.status.last_reload_error, _broker_refusal(d)),
        last_seq=station.recorder.last_seq, delivered=d.sender.delivered if d.sender else 0,
        evidence=d.evidence.stats(), mqtt_connected=bool(link is not None and link.connected),
        sinks=station.fanout.stats(), triggers=d.triggers.stats(), feedback=d.web.feedback.stats(),
        sections=station.fanout.sections())


def reporter_view(d: Daemon) -> ReporterView:
    return ReporterView(cfg=lambda: d.cfg, link=lambda: d.link, inspector=lambda: _inspector(d),
                        stats=lambda: station_stats(d), status=d.status, verdict=lambda seq: _verdict(d, seq))


def page_view(d: Daemon) -> PageView:
    return PageView(cfg=lambda: d.cfg, inspector=lambda: _inspector(d), stats=lambda: station_stats(d),
                    status=d.status, link=lambda: d.link, evidence_folder=lambda: d.evidence.folder,
                    command=d.commands.on_command, listen_replies=d.report.reply_listeners.append,
                    history=lambda: d.station.fanout.find("history") if d.station is not None else None)


def controls(d: Daemon) -> Controls:
    return Controls(cfg=lambda: d.cfg, inspector=lambda: d.station.inspector, report=d.report,
                    feedback=lambda args: d.web.feedback.label(args, d.report.reply),
                    reload=lambda request_id: d.reload(request_id),
                    shadow=lambda args: shadow_command(d.station.fanout.find("shadow"), d.cfg, d.station.inspector,
                                                       d.config_path.parent, args, d.report.reply),
                    switch_model=lambda name, args: switch_model(
                        name, args, cfg=d.cfg, running=lambda: d.station.inspector, shadow=d.station.fanout.find("shadow"),
                        reload=lambda: d.reload(None), status=d.status, reply=d.report.reply))


def apply_log_level(debug: bool, cfg: Config) -> None:
    """-v outranks the configured log_level, also after a reload."""
    logging.getLogger().setLevel(logging.DEBUG if debug else cfg.log_level.upper())


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
    apply_log_level(debug, cfg)
    install_signal_handlers(daemon)
    log_runtime()
    try:
        daemon.start()
    except (StartupError, ConfigError) as exc:
        station_lock.release(daemon.lock)  # let another station start on storage.dir
        logger.error("cannot start: %s", exc)
        return EX_CONFIG
    except StorageError as exc:
        station_lock.release(daemon.lock)  # let another station start on storage.dir
        logger.error("cannot start: %s (exit 75: systemd starts it again after a delay)", exc)
        return EX_TEMPFAIL
    daemon.lock.record([str(listener) for listener in listeners(cfg)])  # for check-config beside it
    code = EX_SOFTWARE
    try:
        code = daemon.run()
    except StorageError as exc:  # fail closed: a verdict without a durable seq is never published
        logger.error("stopping (exit 75: systemd starts it again after a delay): %s", exc)
        code = EX_TEMPFAIL
    finally:
        daemon.shutdown(clean=True)
    return code
