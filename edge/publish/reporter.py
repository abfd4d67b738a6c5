"""The station's own MQTT messages besides verdicts: retained state, periodic stats and command replies.

All are QoS 1 and dropped while disconnected (state is re-published on every connect); without a broker
they are no-ops.
"""
from __future__ import annotations

import logging
import time

from edge.publish import messages

logger = logging.getLogger("lineguard")


class Reporter:
    """Publishes what a running daemon (edge.daemon.Daemon) has to say about itself."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.reply_listeners: list = []  # also told every reply (the station page waits for its own)

    def _publish(self, subtopic: str, data: dict, retain: bool = False) -> None:
        link = self.daemon.link
        if link is not None:
            link.publish(subtopic, messages.to_json(data), qos=1, retain=retain)

    def reply(self, command: str, ok: bool, reason: str, request_id: str | None) -> None:
        self._publish(messages.REPLY, messages.reply_payload(command, ok, reason, request_id))
        for listener in self.reply_listeners:
            listener(command, ok, reason, request_id)

    def state(self) -> None:
        """The retained <base>/state; nothing before a model is loaded."""
        daemon = self.daemon
        if daemon.station is None:
            return
        status, inspector = daemon.status, daemon.station.inspector
        self._publish(messages.STATE, messages.state_payload(
            status.source_state, status.source_detail, inspector.bundle, inspector.threshold,
            status.last_reload_error, status.restart_required), retain=True)

    def stats(self) -> None:
        if self.daemon.link is not None and self.daemon.station is not None:
            self._publish(messages.STATS, self.stats_data())

    def stats_data(self) -> dict:
        """The <base>/stats figures (also what the station page charts)."""
        daemon = self.daemon
        station, link = daemon.station, daemon.link
        return daemon.status.stats_payload(
            daemon.cfg.device_id, station.inspector.bundle, station.inspector.threshold,
            source=daemon.source.stats() if daemon.source is not None else {}, outbox=station.recorder.stats(),
            last_seq=station.recorder.last_seq, delivered=daemon.sender.delivered if daemon.sender else 0,
            evidence=daemon.evidence.stats(), mqtt_connected=bool(link is not None and link.connected),
            sinks=station.fanout.stats())

    def stats_if_due(self, next_due_s: float) -> float:
        """Publish stats when they are due; the next due time."""
        now = time.monotonic()
        if now < next_due_s:
            return next_due_s
        self.stats()
        return now + self.daemon.cfg.mqtt.stats_interval_s

    def trigger_answer(self, trigger, frame, seq: int | None) -> None:
        if frame is None:
            self.reply("trigger", False, "no frame from the source in time", trigger.request_id)
        elif seq is None:
            self.reply("trigger", False, f"frame {frame.name} could not be inspected", trigger.request_id)
        else:
            self.reply("trigger", True, f"inspected as seq {seq}", trigger.request_id)

    def threshold_changed(self, old: float, args) -> None:
        """After a threshold command: the reply, then stats and state."""
        logger.info("threshold changed by command: %.6g -> %.6g", old, args.threshold)
        self.reply("threshold", True, f"threshold {old:.6g} -> {args.threshold:.6g}", args.request_id)
        self.stats()
        self.state()

    def reloaded(self, status: str, ok: bool, reason: str, request_id: str | None) -> None:
        """After a reload or its refusal: systemd status, then stats and state, then the reply, so a reply
        means the state is current."""
        self.daemon.notifier.ready(status)
        self.stats()
        self.state()
        self.reply("reload", ok, reason, request_id)
