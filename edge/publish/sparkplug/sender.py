"""The edge node's sender: on every connection NBIRTH and DBIRTH first, then the outbox's DDATA rows, one seq.

The outbox sender (edge.publish.sender) on the node's own link and on the rows held for it
(edge.publish.sparkplug.payloads.HELD_DDATA): each row is removed once the broker acknowledges it, a connection
that drops before then sends it again after the next births. It alone publishes the node's births and data, so the
payload seq is in the order the messages are handed to the link: NBIRTH 0, DBIRTH 1, then each DDATA the next.
That is also the order on the wire only while paho queues nothing: past its in-flight limit it holds QoS 1 messages
back, and a QoS 0 birth would overtake them. So no more DDATA are in flight than that limit.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.publish.outbox import Outbox, OutboxMessage
from edge.publish.sender import OutboxSender
from edge.publish.sparkplug import payloads
from edge.publish.sparkplug.link import SparkplugLink

logger = logging.getLogger(__name__)

BIRTH_QOS = 0  # the spec's, for NBIRTH, DBIRTH and the live state DDATA: a new connection births afresh anyway


@dataclass(frozen=True)
class Snapshot:
    """The latest verdict the node built DDATA for: what a DBIRTH reports as current."""

    seq: int  # its verdict seq (before the first: the outbox's last seq at start)
    values: dict[str, Any]  # metric name -> value; empty before the first verdict
    stamped_ms: int | None = None  # when it was judged


@dataclass(frozen=True)
class NodeView:
    """What the sender reads of the node (edge.publish.sparkplug.node), from its own thread."""

    snapshot: Callable[[], Snapshot]
    state: Callable[[], str]  # the source's state
    take_rebirth: Callable[[], bool]  # True once per NCMD rebirth
    software: str
    station: str


class SparkplugSender(OutboxSender):
    """Drains the held DDATA rows through the node's link, after the births of each connection."""

    thread_name = "sparkplug-sender"
    refused_kind = "Sparkplug DDATA message"

    def __init__(self, link: SparkplugLink, outbox: Outbox, node: NodeView, window: int = 256) -> None:
        super().__init__(link, outbox, window, rows=(payloads.HELD_DDATA, True))
        self._node_link = link
        self._node = node
        self._sequence = payloads.Sequence()
        self._births_due = False
        self._reported_seq = 0  # the births reported this verdict as current: rows up to it are history
        self._state_sent: str | None = None
        self._most_in_flight = window

    def _restart_from_oldest(self, session: int | None) -> None:
        super()._restart_from_oldest(session)
        self._births_due = session is not None

    def _session_ready(self, session: int) -> bool:
        if self._node.take_rebirth():
            self._births_due = True
        if self._births_due:
            if not self._publish_births(session):
                return False
            self._births_due = False
        state = self._node.state()
        if state != self._state_sent:
            if self._publish(session, self._node_link.topics.of_device("DDATA"),
                             payloads.state_data(self._sequence.peek(), state), BIRTH_QOS) is None:
                return False
            self._state_sent = state
        return True

    def _fill_window(self, session: int) -> None:
        limit = self._node_link.inflight_limit
        self._window = min(self._most_in_flight, limit) if limit > 0 else self._most_in_flight
        super()._fill_window(session)

    def _publish_births(self, session: int) -> bool:
        topics, node = self._node_link.topics, self._node
        snapshot, state, bdseq = node.snapshot(), node.state(), self._node_link.session_bdseq
        if bdseq is None:
            return False
        self._sequence.restart()
        nbirth = payloads.node_birth(bdseq, self._sequence.peek(), node.software, node.station)
        if self._publish(session, topics.of_node("NBIRTH"), nbirth, BIRTH_QOS) is None:
            return False
        dbirth = payloads.device_birth(self._sequence.peek(), snapshot.values, snapshot.stamped_ms, state)
        if self._publish(session, topics.of_device("DBIRTH"), dbirth, BIRTH_QOS) is None:
            return False
        self._reported_seq, self._state_sent = snapshot.seq, state
        logger.info("Sparkplug births published (bdSeq %d) on %s", bdseq, topics.of_node("NBIRTH"))
        return True

    def _publish_row(self, session: int, row: OutboxMessage) -> int | None:
        data = payloads.data_to_send(row.payload, self._sequence.peek(), historical=row.seq <= self._reported_seq)
        return self._publish(session, self._node_link.topics.of_device("DDATA"), data, row.qos)

    def _publish(self, session: int, topic: str, payload: bytes, qos: int) -> int | None:
        """Hand one message of the node to the link; its seq is spent only if it went."""
        mid = self._link.publish_in_session(session, topic, payload, qos)
        if mid is not None:
            self._sequence.advance()
        return mid
