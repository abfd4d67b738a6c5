"""The Sparkplug B edge node as one of the station's outputs (edge.publish.outputs).

Each verdict's DDATA is built in the frame loop and stored in the outbox with the verdict, in its transaction
(:meth:`SparkplugNode.durable`), held for the node's sender: so no verdict is lost across broker outages and
restarts, and after every (re)connect its DDATA follows a fresh NBIRTH and DBIRTH. The node starts its own link and
sender when the station starts inspecting and stops them (NDEATH, then DISCONNECT) when the station stops.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

from edge.config.secrets import resolve_mqtt_password
from edge.publish.outbox import Outbox
from edge.publish.sinks import VerdictSink
from edge.publish.sparkplug import payloads
from edge.publish.sparkplug.link import BdSeqStore, SparkplugLink
from edge.publish.sparkplug.sender import NodeView, Snapshot, SparkplugSender

logger = logging.getLogger(__name__)

BDSEQ_FILE = "sparkplug-bdseq"  # in storage.dir
CLIENT_ID_SUFFIX = "-sparkplug"
COUNTED = {"pass": "Pass", "fail": "Fail", "unscorable": "Unscorable"}


def _software() -> str:
    try:
        return f"lineguard {metadata.version('lineguard')}"
    except metadata.PackageNotFoundError:
        return "lineguard"


class SparkplugNode(VerdictSink):
    """Builds each verdict's DDATA row and runs the node's link and sender. Inline: its work per verdict is the
    DDATA it builds in the frame loop anyway."""

    name = "sparkplug"
    inline = True

    def __init__(self, cfg, outbox: Outbox, state: Callable[[], str]) -> None:
        spb = cfg.sparkplug
        self.data_qos = spb.data_qos
        self.topics = payloads.Topics(spb.group_id, cfg.sparkplug_node_id, spb.device_id)
        self.counters = {name: 0 for name in (*COUNTED.values(), "Alerts")}
        self._snapshot = Snapshot(seq=outbox.last_seq, values={})  # replaced whole: read from the sender's thread
        self._rebirth = threading.Event()
        settings = cfg.mqtt.model_copy(update={"tcp_nodelay": cfg.mqtt_nodelay})
        self.link = SparkplugLink(settings, self.topics, BdSeqStore(cfg.storage.dir / BDSEQ_FILE), self._on_rebirth,
                                  client_id=f"{cfg.mqtt_client_id}{CLIENT_ID_SUFFIX}",
                                  password=resolve_mqtt_password(cfg.mqtt))
        view = NodeView(snapshot=lambda: self._snapshot, state=state, take_rebirth=self._take_rebirth,
                        software=_software(), station=cfg.device_id)
        self.sender = SparkplugSender(self.link, outbox, view, window=cfg.mqtt.max_inflight)
        self._started = False

    def _on_rebirth(self) -> None:
        self._rebirth.set()
        self.sender.wake()

    def _take_rebirth(self) -> bool:
        if not self._rebirth.is_set():
            return False
        self._rebirth.clear()
        return True

    def durable(self, message: dict[str, Any], alert: bool) -> list[tuple[str, bytes, int]]:
        verdict = COUNTED.get(message["verdict"])
        if verdict is not None:
            self.counters[verdict] += 1
        self.counters["Alerts"] += alert
        values = payloads.verdict_values(message, alert, self.counters)
        stamped_ms = payloads.now_ms()
        self._snapshot = Snapshot(seq=message["seq"], values=values, stamped_ms=stamped_ms)
        return [(payloads.HELD_DDATA, payloads.verdict_data(values, stamped_ms), self.data_qos)]

    def refusal(self) -> str | None:
        """Why the broker counts as refusing the node's data (OutboxSender.refusal), or None."""
        return self.sender.refusal()

    def on_verdict(self, event) -> None:
        self.sender.wake()  # the verdict's DDATA row is in the outbox now

    def on_start(self) -> None:
        self.link.start()
        self.sender.start()
        self._started = True
        logger.info("Sparkplug B edge node %s/%s with device %s", self.topics.group, self.topics.node,
                    self.topics.device)

    def close(self) -> None:
        if self._started:
            self.sender.stop()
            self.link.stop(clean=True)  # the NDEATH, then DISCONNECT
            self._started = False


def build(parts) -> SparkplugNode | None:
    """The node when sparkplug.enabled; without it, DDATA rows an earlier run left in the outbox are removed."""
    cfg = parts.cfg()
    if not cfg.sparkplug.enabled or parts.link is None:
        _remove_held_rows(parts.outbox)
        return None
    return SparkplugNode(cfg, parts.outbox, lambda: parts.status.source_state if parts.status else "running")


def _remove_held_rows(outbox: Outbox | None) -> None:
    removed = 0
    while outbox is not None and (rows := outbox.pending(limit=500, prefix=payloads.HELD_DDATA)):
        removed += outbox.ack([row.id for row in rows])
    if removed:
        logger.warning("sparkplug.enabled is false: removed %d Sparkplug DDATA message(s) an earlier run left "
                       "in the outbox", removed)
