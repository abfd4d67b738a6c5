"""uvicorn's HTTP/1.1 protocol (h11) with the limits a station page needs against slow or silent clients.

- Each request's headers must arrive within web.read_timeout_s (metrics.read_timeout_s on the metrics port)
  of the connection (or of the previous answer), and its body within as long again; otherwise the connection
  is closed. uvicorn alone waits forever for the first request's headers, so idle sockets piled up until the
  daemon ran out of file descriptors.
- An answer sent before the body was read (a refusal: too large, no length) is followed by a short lingering
  close: what the client still sends is discarded unread for a moment, so it reads the answer instead of a
  connection reset.
- At most web.max_connections connections are open. A new one beyond that replaces the oldest connection
  that is waiting for a request (its client has sent no whole request); if every one is busy, it is closed.
"""
from __future__ import annotations

import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge.log_limit import LogLimit, held_back

logger = logging.getLogger("lineguard")

REQUEST_DONE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
CAP_WARNING_EVERY_S = 60.0
LINGER_S = 2.0
LINGER_BYTES = 16 * 1024 * 1024


def limited_protocol(read_timeout_s: float, max_connections: int, setting: str = "web.port") -> type[H11Protocol]:
    """A protocol class for one server (its open connections are counted apart from any other server's);
    ``setting`` names its section in the warning when it is full."""
    section = setting.split(".")[0]
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {
        "read_timeout_s": read_timeout_s, "max_connections": max_connections, "open": {},
        "full_log": LogLimit(CAP_WARNING_EVERY_S), "section": section})


class LimitedH11Protocol(H11Protocol):
    read_timeout_s: float
    max_connections: int
    open: dict  # this server's connections, oldest first (a dict keeps insertion order)
    full_log: LogLimit  # a flood of connections must not flood the log
    section: str  # the config section whose limits these are

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = None
        self._linger_left: int | None = None
        self.open[self] = None
        if len(self.open) > self.max_connections and not self._evict_one_waiting():
            self.open.pop(self, None)
            self._warn_full()
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self.open.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:
            self._linger_left -= len(data)  # dropped unread: never parsed, never kept
            if self._linger_left < 0:
                self.transport.close()
            return
        before = self.conn.their_state
        super().data_received(data)
        self._follow(before)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY:
            self._linger()
        elif self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's headers get their own deadline
        else:
            self._follow(None)

    def _linger(self) -> None:
        if self.transport.is_closing():
            return
        self._linger_left = LINGER_BYTES
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is complete: the client sees its end at once
        self._disarm()
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def _follow(self, before) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY and before is not h11.SEND_BODY:
            self._arm()  # headers are in: the body gets its own deadline
        elif state in REQUEST_DONE:
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()

    def _waiting(self) -> bool:
        """No request in hand: nothing is lost by closing it."""
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE \
            and not self.transport.is_closing()

    def _evict_one_waiting(self) -> bool:
        oldest = next((other for other in self.open if other is not self and other._waiting()), None)
        if oldest is None:
            return False
        self.open.pop(oldest, None)
        oldest.transport.close()
        return True

    def _warn_full(self) -> None:
        if events := self.full_log.due():
            logger.warning("%s: %d connections busy (%s.max_connections): new ones are closed%s", self.section,
                           self.max_connections, self.section, held_back(events, "closed"))
