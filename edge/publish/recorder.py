"""A verdict's durable record: its seq and its messages in the outbox, in one transaction, before anything else.

Fail closed: a verdict the outbox cannot record (disk full from outside, I/O error) is not published, since
its seq would not be durable and a restart would give that seq again. The recorder raises StorageError, and
the station stops with exit 75 (systemd starts it again once space is back; README, Troubleshooting).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from edge.core.space import free_bytes
from edge.errors import StorageError
from edge.publish import messages
from edge.publish.outbox import Outbox, OutboxError
from edge.text import one_line

logger = logging.getLogger("lineguard")

Message = tuple[str, bytes, int]  # subtopic under <base> (edge.publish.messages), payload, qos


@dataclass
class OutboxHealth:
    """Writes to the outbox that failed. The last two stay 0 (no verdict is sent undurably); kept for dashboards."""

    errors: int = 0
    last_error: str | None = None
    published_directly: int = 0
    lost: int = 0


class VerdictRecorder:
    """Gives each verdict its seq and queues its messages for the outbox sender."""

    def __init__(self, outbox: Outbox, base_topic: str, sender=None) -> None:
        self.outbox = outbox
        self.base_topic = base_topic
        self.sender = sender
        self.health = OutboxHealth()
        self.last_seq = outbox.last_seq  # nothing reserved: a start that inspects nothing spends no seq

    def next_seq(self) -> int:
        """The next verdict's seq. Outbox.put records it with the verdict, in one transaction, so a kill
        between two frames leaves no gap in the seqs a receiver sees."""
        self.last_seq += 1
        return self.last_seq

    def record(self, seq: int, sent: list[Message], kept: list[Message] = ()) -> None:
        """Queue one verdict's messages durably: ``sent`` under <base>, ``kept`` on full topics (VerdictSink.durable);
        StorageError (the seq is given back) when the outbox cannot."""
        try:
            self.outbox.put(seq, [(messages.topic(self.base_topic, sub), payload, qos) for sub, payload, qos in sent]
                            + list(kept))
        except OutboxError as exc:
            self.last_seq = seq - 1  # not published, so not spent: the next start gives it to the next verdict
            self.health.errors += 1
            self.health.last_error = one_line(str(exc))
            raise StorageError(self._refusal(seq, exc)) from None
        if self.sender is not None:
            self.sender.wake()

    def _refusal(self, seq: int, exc: OutboxError) -> str:
        folder = self.outbox.path.parent
        try:
            free = f"{free_bytes(folder)} bytes free"
        except OSError as stat_error:
            free = f"free space unknown ({stat_error.strerror})"
        return (f"storage.dir {folder} ({free}): the outbox cannot record verdict seq {seq}: {one_line(str(exc))}; "
                "no verdict is published without a durable seq")

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
