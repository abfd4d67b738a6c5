"""The station's own MQTT messages besides verdicts: retained state, periodic stats and command replies.

All are QoS 1 and dropped while disconnected (state is re-published on every connect); without a broker
they are no-ops.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.publish import messages
from edge.publish.discovery import discovery_messages
from edge.status import StationStatus

if TYPE_CHECKING:
    from edge.config.schema import Config
    from edge.core.inspector import Inspector
    from edge.publish.mqtt import MqttLink

logger = logging.getLogger("lineguard")

STOPPED = "stopped"  # the state's source after a clean stop


@dataclass(frozen=True)
class ReporterView:
    """What the reporter reads of a running station. Callables, since the link and the model exist only after
    start-up and a reload replaces the config and the model."""

    cfg: Callable[[], Config]
    link: Callable[[], MqttLink | None]  # None without a broker
    inspector: Callable[[], Inspector | None]  # None before a model is loaded
    stats: Callable[[], dict]  # the <base>/stats payload as of now (edge.publish.messages.stats_payload)
    status: StationStatus  # the reporter also writes the stop and reload outcomes into it
    verdict: Callable[[int], dict | None] = lambda seq: None  # {"verdict", "score"} of the verdict with this seq


class Reporter:
    """Publishes what a running station has to say about itself."""

    def __init__(self, view: ReporterView) -> None:
        self.view = view
        self.reply_listeners: list = []  # also told every reply (the station page waits for its own)

    def _publish(self, subtopic: str, data: dict, retain: bool = False) -> None:
        link = self.view.link()
        if link is not None:
            link.publish(subtopic, messages.to_json(data), qos=1, retain=retain)

    def reply(self, command: str, ok: bool, reason: str, request_id: str | None, seq: int | None = None,
              verdict: dict | None = None) -> None:
        self._publish(messages.REPLY, messages.reply_payload(command, ok, reason, request_id, seq, verdict))
        for listener in self.reply_listeners:
            listener(command, ok, reason, request_id)

    def on_connection(self, connected: bool, detail: str) -> None:
        """An MqttLink connection listener. On every (re)connect: Home Assistant discovery, then state (changes
        while disconnected were dropped, and the retained one may be stale)."""
        if connected:
            self.announce()
            self.state()

    def announce(self) -> None:
        """The retained Home Assistant discovery configs, when homeassistant.enabled (edge.publish.discovery)."""
        cfg, link, inspector = self.view.cfg(), self.view.link(), self.view.inspector()
        if not cfg.homeassistant.enabled or link is None or inspector is None:
            return
        for topic, payload in discovery_messages(
                cfg.homeassistant.discovery_prefix, cfg.mqtt.topic_prefix, cfg.device_id,
                inspector.bundle.name, inspector.threshold, inspector.calibration.threshold_range()):
            link.publish_topic(topic, payload, qos=1, retain=True)

    def state(self) -> None:
        """The retained <base>/state; nothing before a model is loaded."""
        inspector, status = self.view.inspector(), self.view.status
        if inspector is None:
            return
        self._publish(messages.STATE, messages.state_payload(
            status.source_state, status.source_detail, inspector.bundle, inspector.threshold,
            status.last_reload_error, status.restart_required, status.threshold_dropped), retain=True)

    def stats(self) -> None:
        if self.view.link() is not None and self.view.inspector() is not None:
            self._publish(messages.STATS, self.view.stats())

    def final(self, clean: bool) -> None:
        """Before the link closes: last stats and, on a clean stop, the retained state `stopped`. The status
        topic then says `offline` for any stop; `state` tells a planned stop from a crash (where it keeps the
        last source state)."""
        self.stats()
        status = self.view.status
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
        return now + self.view.cfg().mqtt.stats_interval_s

    def trigger_answer(self, answer) -> None:
        """The reply to an MQTT trigger (edge.io.triggers.Answer): ok only when inspected, with its seq, verdict
        and score."""
        trigger, seq = answer.trigger, answer.seq
        self.reply("trigger", seq is not None, answer.reason, trigger.request_id, seq,
                   self.view.verdict(seq) if seq is not None else None)

    def threshold_changed(self, old: float, args) -> None:
        """After a threshold command: the reply, then stats and state."""
        logger.info("threshold changed by command: %.6g -> %.6g", old, args.threshold)
        self.reply("threshold", True, f"threshold {old:.6g} -> {args.threshold:.6g}", args.request_id)
        self.stats()
        self.state()

    def reloaded(self, ok: bool, reason: str, request_id: str | None) -> None:
        """After a reload or its refusal (and systemd told): stats and state, then the reply, so a reply means the
        state is current."""
        counters = self.view.status.counters
        counters.reloads += ok
        counters.reload_failures += not ok
        if ok:
            self.announce()  # the threshold's range follows the model
        self.stats()
        self.state()
        self.reply("reload", ok, reason, request_id)
