"""A verdict's durable record: its seq and its messages in the outbox, in one transaction, before anything else.

If the outbox cannot be written (disk full), verdicts are published directly at QoS 1 without durability, and
stats count it.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from edge.publish import messages
from edge.publish.outbox import Outbox, OutboxError
from edge.text import one_line

logger = logging.getLogger("lineguard")

Message = tuple[str, bytes, int]  # subtopic under <base> (edge.publish.messages), payload, qos


@dataclass
class OutboxHealth:
    """Writes to the outbox that failed, and what became of their messages."""

    errors: int = 0
    last_error: str | None = None
    published_directly: int = 0  # sent at QoS 1 without durability
    lost: int = 0  # could not be sent either: broker unreachable too


class VerdictRecorder:
    """Gives each verdict its seq and queues its messages for the outbox sender."""

    def __init__(self, outbox: Outbox, base_topic: str, link=None, sender=None) -> None:
        self.outbox = outbox
        self.base_topic = base_topic
        self.link = link
        self.sender = sender
        self.health = OutboxHealth()
        self.last_seq = outbox.last_seq  # nothing reserved: a start that inspects nothing spends no seq

    def next_seq(self) -> int:
        """The next verdict's seq. Outbox.put records it with the verdict, in one transaction, so a kill
        between two frames leaves no gap in the seqs a receiver sees."""
        self.last_seq += 1
        return self.last_seq

    def record(self, seq: int, sent: list[Message]) -> None:
        """Queue one verdict's messages durably; if the outbox cannot be written, publish them directly."""
        try:
            self.outbox.put(seq, [(messages.topic(self.base_topic, sub), payload, qos) for sub, payload, qos in sent])
        except OutboxError as exc:
            self._write_failed(exc)
            self._publish_undurable(sent)
            return
        if self.health.last_error is not None:
            logger.warning("outbox writable again after %d failed write(s); verdicts are durable again",
                           self.health.errors)
            self.health.last_error = None
        if self.sender is not None:
            self.sender.wake()

    def _write_failed(self, exc: OutboxError) -> None:
        if self.health.last_error is None:
            logger.error("outbox cannot be written (%s); publishing verdicts directly at QoS 1, without "
                         "durability, until it can (they may overtake older queued ones; seq orders them)", exc)
        self.health.errors += 1
        self.health.last_error = one_line(str(exc))

    def _publish_undurable(self, sent: list[Message]) -> None:
        for subtopic, payload, qos in sent:
            if self.link is not None and self.link.publish(subtopic, payload, qos=qos):
                self.health.published_directly += 1
            else:
                self.health.lost += 1

    def drain(self, timeout_s: float) -> None:
        """At the end of a finite replay: wait, bounded, for what is pending to be delivered."""
        pending = self.outbox.depth()
        if pending and self.sender is not None:
            logger.info("replay finished; delivering %d pending message(s), waiting up to %.0f s", pending, timeout_s)
            if not self.sender.wait_drained(timeout_s):
                logger.warning("%d message(s) stay in the outbox for the next start", self.outbox.depth())

    def stats(self) -> dict:
        return {"depth": self.outbox.depth(), "dropped": self.outbox.dropped, **asdict(self.health),
                "discarded": self.sender.discarded if self.sender is not None else 0,
                "recovered_from": self.outbox.recovered_from}
