"""One log line per interval for events that may come in floods (busy triggers, refused logins, a full server),
with a count of those held back, so a flood never floods the journal and still shows its size."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LogLimit:
    """Says when a line is due: at the first event, then at most once per ``every_s``."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._logged_s: float | None = None
        self._events = 0  # since the last line let through

    def due(self) -> int:
        """Count one event; the events since the last line (this one included) if a line is due now, else 0."""
        with self._lock:
            now = self._clock()
            self._events += 1
            if self._logged_s is not None and now - self._logged_s < self.every_s:
                return 0
            self._logged_s, events, self._events = now, self._events, 0
            return events


def held_back(events: int, what: str) -> str:
    """" (N more <what> since the last such line)" for a line that stands for more than its own event."""
    return f" ({events - 1} more {what} since the last such line)" if events > 1 else ""
