"""The sender thread that drains the durable outbox through the MQTT link, in order, at QoS 1."""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from edge.publish.mqtt import MqttLink
from edge.publish.outbox import HELD, Outbox, OutboxError, OutboxMessage

logger = logging.getLogger(__name__)

SENDER_THREAD_NAME = "outbox-sender"
SENDER_IDLE_RECHECK_S = 5.0
SENDER_ERROR_BACKOFF_MIN_S = 1.0
SENDER_ERROR_BACKOFF_MAX_S = 30.0
SENDER_JOIN_TIMEOUT_S = 5.0
REFUSAL_SHOWN_S = 60.0  # a refused message marks the broker as refusing for this long
DRAIN_RECHECK_S = 0.2  # another sender may empty the outbox (one that drains the held rows): look again this often


class OutboxSender:
    """Thread that drains the Outbox through the MqttLink: publish QoS 1 in order, delete each row on PUBACK.

    While connected it publishes rows after an in-memory cursor, keeping at
    most ``window`` in flight, and deletes rows in batches as their PUBACKs
    arrive. On every new connection it starts over from the oldest row still
    stored, so unacknowledged messages are re-sent in order: a receiver may see
    a duplicate, but never a gap or a reordering.

    It sends the rows whose topic starts with ``rows[0]`` (``rows[1]`` True) or does not (False): by default every
    row but those held for another sender (edge.publish.outbox.HELD). A subclass may send something first on
    each connection (:meth:`_session_ready`) and change what a row becomes on the wire (:meth:`_publish_row`).
    """

    thread_name = SENDER_THREAD_NAME
    refused_kind = "outbox message"  # what a refusal names, in the log and in refusal()

    def __init__(self, link: MqttLink, outbox: Outbox, window: int = 256,
                 on_delivered: Callable[[list[int]], None] | None = None, rows: tuple[str, bool] = (HELD, False)
                 ) -> None:
        """``on_delivered`` hears the seqs of verdicts whose messages the broker acknowledged (sender thread)."""
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._link = link
        self._outbox = outbox
        self._window = window
        self._rows = rows
        self._wakeup = threading.Event()
        self._stop_requested = threading.Event()
        # Filled by the network thread, drained by the sender thread (deque ops are atomic).
        self._acks: collections.deque[tuple[int | None, int, bool]] = collections.deque()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._session: int | None = None
        self._cursor = 0
        self._in_flight: dict[int, tuple[int, int]] = {}  # paho mid -> outbox row id, verdict seq
        self._acked_unsaved: list[int] = []
        self._acked_seqs: list[int] = []
        self._on_delivered = on_delivered
        self._delivered = 0
        self.discarded = 0  # rows that could never be published (invalid topic/qos/size)
        self.refused = 0  # acknowledgements with a failure code (MQTT 5), for the log
        self._last_refused_s: float | None = None

    @property
    def delivered(self) -> int:
        """Messages acknowledged by the broker (PUBACK) and removed from the outbox so far."""
        return self._delivered

    def refusal(self) -> str | None:
        """Why the broker counts as refusing (stats `components.broker`): it refused an outbox message within
        REFUSAL_SHOWN_S; None otherwise. A connected broker that refuses every result delivers nothing."""
        last = self._last_refused_s
        if last is None or (ago := time.monotonic() - last) > REFUSAL_SHOWN_S:
            return None
        return (f"broker refused {self.refused} {self.refused_kind}(s), the last {ago:.0f} s ago (not allowed by its "
                "ACL?); they stay in the outbox")

    def start(self) -> None:
        """Start the sender thread."""
        if self._thread is not None:
            raise RuntimeError("OutboxSender already started")
        self._stop_requested.clear()
        self._session = None
        self._cursor = 0
        self._in_flight.clear()
        self._acks.clear()
        self._link.add_publish_listener(self._on_ack)
        self._link.add_connection_listener(self._on_connection_change)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        self.wake()

    def stop(self) -> None:
        """Stop the thread; unacknowledged rows stay in the outbox for the next start."""
        thread = self._thread
        if thread is None:
            return
        self._stop_requested.set()
        self._wakeup.set()
        thread.join(SENDER_JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.warning("outbox sender did not stop within %.1f s", SENDER_JOIN_TIMEOUT_S)
        self._link.remove_publish_listener(self._on_ack)
        self._link.remove_connection_listener(self._on_connection_change)
        self._thread = None

    def wake(self) -> None:
        """Tell the sender new rows were put, so they go out without waiting."""
        self._wakeup.set()

    def wait_drained(self, timeout_s: float) -> bool:
        """Block until the outbox is empty or ``timeout_s`` elapsed; return whether it is empty."""
        deadline_s = time.monotonic() + timeout_s
        with self._progress:
            while self._outbox.depth() and (left_s := deadline_s - time.monotonic()) > 0:
                self._progress.wait(min(left_s, DRAIN_RECHECK_S))
            return self._outbox.depth() == 0

    # -- callbacks from the network thread ------------------------------------

    def _on_ack(self, session: int | None, mid: int, accepted: bool) -> None:
        self._acks.append((session, mid, accepted))
        self._wakeup.set()

    def _on_connection_change(self, connected: bool, reason: str) -> None:
        self._wakeup.set()

    # -- sender thread --------------------------------------------------------

    def _run(self) -> None:
        logger.info("outbox sender started, %d messages pending", self._outbox.depth())
        backoff_s = SENDER_ERROR_BACKOFF_MIN_S
        while not self._stop_requested.is_set():
            self._wakeup.wait(SENDER_IDLE_RECHECK_S)
            self._wakeup.clear()
            if self._stop_requested.is_set():
                break
            try:
                self._step()
            except Exception as exc:
                if isinstance(exc, OutboxError):
                    logger.error("outbox sender: %s; retrying in %.0f s", exc, backoff_s)
                else:
                    logger.exception("outbox sender failed; retrying in %.0f s", backoff_s)
                self._stop_requested.wait(backoff_s)
                backoff_s = min(backoff_s * 2, SENDER_ERROR_BACKOFF_MAX_S)
                self._wakeup.set()
            else:
                backoff_s = SENDER_ERROR_BACKOFF_MIN_S
        logger.info("outbox sender stopped, %d messages pending", self._outbox.depth())

    def _step(self) -> None:
        self._settle_acks()
        session = self._link.session
        if session != self._session:
            self._restart_from_oldest(session)
        if session is not None and self._session_ready(session):
            self._fill_window(session)

    def _session_ready(self, session: int) -> bool:
        """Whether the rows may go out on this connection now; a subclass first sends what must precede them."""
        return True

    def _publish_row(self, session: int, row: OutboxMessage) -> int | None:
        """Publish one row as stored: the paho message id, None when the connection changed; ValueError if never."""
        return self._link.publish_in_session(session, row.topic, row.payload, row.qos)

    def _settle_acks(self) -> None:
        while self._acks:
            session, mid, accepted = self._acks.popleft()
            row = self._in_flight.pop(mid, None) if session == self._session else None
            if row is None:
                continue  # the link's own messages, or an earlier connection's
            row_id, seq = row
            if accepted:
                self._acked_unsaved.append(row_id)
                self._acked_seqs.append(seq)
            else:  # over MQTT 5, e.g. "not authorized" by the broker's ACL: logged once per 1000, not per frame
                self.refused += 1
                self._last_refused_s = time.monotonic()
                if self.refused == 1 or self.refused % 1000 == 0:
                    logger.warning("broker refused %s %d (%d so far); it stays in the outbox and is "
                                   "re-sent after reconnecting", self.refused_kind, row_id, self.refused)
        if self._acked_unsaved:
            # Under the lock, so a waiter never sees an empty outbox with an old count.
            with self._progress:
                removed = self._outbox.ack(self._acked_unsaved)
                self._acked_unsaved = []
                self._delivered += removed
                self._progress.notify_all()
            seqs, self._acked_seqs = sorted(set(self._acked_seqs)), []
            if self._on_delivered is not None:
                self._on_delivered(seqs)

    def _restart_from_oldest(self, session: int | None) -> None:
        if self._in_flight:
            logger.info("connection changed: %d outbox messages unacknowledged, re-sending", len(self._in_flight))
        self._session = session
        self._cursor = 0
        self._in_flight.clear()

    def _fill_window(self, session: int) -> None:
        free = self._window - len(self._in_flight)
        if free <= 0:
            return
        prefix, matching = self._rows
        for row in self._outbox.pending(after_id=self._cursor, limit=free, prefix=prefix, matching=matching):
            try:
                mid = self._publish_row(session, row)
            except ValueError as exc:
                self._discard(row.id, row.seq, exc)
                self._cursor = row.id
                continue
            if mid is None:
                return  # connection lost: the next session starts from the oldest row
            self._in_flight[mid] = (row.id, row.seq)
            self._cursor = row.id

    def _discard(self, row_id: int, seq: int, error: ValueError) -> None:
        logger.error("outbox message %d (seq %d) can never be published (%s); discarding it", row_id, seq, error)
        with self._progress:
            self._outbox.ack([row_id])
            self.discarded += 1
            self._progress.notify_all()

