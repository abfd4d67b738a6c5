"""The station's own MQTT messages besides verdicts: retained state, periodic stats and command replies.

All are QoS 1 and dropped while disconnected (state is re-published on every connect); without a broker
they are no-ops.
"""
from __future__ import annotations

import logging
import time

from edge.publish import messages
from edge.publish.discovery import discovery_messages

logger = logging.getLogger("lineguard")

STOPPED = "stopped"  # the state's source after a clean stop


class Reporter:
    """Publishes what a running daemon (edge.daemon.Daemon) has to say about itself."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.reply_listeners: list = []  # also told every reply (the station page waits for its own)

    def _publish(self, subtopic: str, data: dict, retain: bool = False) -> None:
        link = self.daemon.link
        if link is not None:
            link.publish(subtopic, messages.to_json(data), qos=1, retain=retain)

    def reply(self, command: str, ok: bool, reason: str, request_id: str | None, seq: int | None = None) -> None:
        self._publish(messages.REPLY, messages.reply_payload(command, ok, reason, request_id, seq))
        for listener in self.reply_listeners:
            listener(command, ok, reason, request_id)

    def connected(self) -> None:
        """On every (re)connect: Home Assistant discovery, then state (changes while disconnected were dropped,
        and the retained one may be stale)."""
        self.announce()
        self.state()

    def announce(self) -> None:
        """The retained Home Assistant discovery configs, when homeassistant.enabled (edge.publish.discovery)."""
        daemon = self.daemon
        if not daemon.cfg.homeassistant.enabled or daemon.link is None or daemon.station is None:
            return
        inspector = daemon.station.inspector
        for topic, payload in discovery_messages(
                daemon.cfg.homeassistant.discovery_prefix, daemon.cfg.mqtt.topic_prefix, daemon.cfg.device_id,
                inspector.bundle.name, inspector.threshold, inspector.calibration.threshold_range()):
            daemon.link.publish_topic(topic, payload, qos=1, retain=True)

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
        """The <base>/stats payload as of now; also what /metrics shows (edge.publish.metrics) and the station page
        charts, from any thread."""
        daemon = self.daemon
        station, link = daemon.station, daemon.link
        return daemon.status.stats_payload(
            daemon.cfg.device_id, station.inspector.bundle, station.inspector.threshold,
            source=daemon.source.stats() if daemon.source is not None else {}, outbox=station.recorder.stats(),
            last_seq=station.recorder.last_seq, delivered=daemon.sender.delivered if daemon.sender else 0,
            evidence=daemon.evidence.stats(), mqtt_connected=bool(link is not None and link.connected),
            sinks=station.fanout.stats(), triggers=daemon.triggers.stats())

    def final(self, clean: bool) -> None:
        """Before the link closes: last stats and, on a clean stop, the retained state `stopped`. The status
        topic then says `offline` for any stop; `state` tells a planned stop from a crash (where it keeps the
        last source state)."""
        self.stats()
        status = self.daemon.status
        if clean:
            status.source_detail = f"clean stop; the source was {status.source_state} {status.source_detail}".strip()
            status.source_state = STOPPED
            self.state()

    def stats_if_due(self, next_due_s: float) -> float:
        """Publish stats when they are due; the next due time."""
        now = time.monotonic()
        if now < next_due_s:
            return next_due_s
        self.stats()
        return now + self.daemon.cfg.mqtt.stats_interval_s

    def trigger_answer(self, answer) -> None:
        """The reply to an MQTT trigger (edge.io.triggers.Answer): ok only when inspected, with its seq."""
        trigger = answer.trigger
        self.reply("trigger", answer.seq is not None, answer.reason, trigger.request_id, answer.seq)

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
        counters = self.daemon.status.counters
        counters.reloads += ok
        counters.reload_failures += not ok
        if ok:
            self.announce()  # the threshold's range follows the model
        self.stats()
        self.state()
        self.reply("reload", ok, reason, request_id)
