"""Wrong passwords in a row, per source: the station page's logins (by client address) and the OPC UA
server's (by peer address) are held back by the same rule."""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FREE_ATTEMPTS = 5  # wrong passwords in a row a source may try before it must wait
FIRST_WAIT_S = 30.0  # doubled at each further lockout, up to MAX_WAIT_S
MAX_WAIT_S = 3600.0
MAX_SOURCES = 1024


@dataclass
class _Attempts:
    count: int = 0
    lockouts: int = 0
    until_s: float = 0.0


class LoginThrottle:
    """Counts password attempts per source before they are evaluated, so parallel guesses are held back as
    much as serial ones: after FREE_ATTEMPTS wrong ones in a row a source waits, longer at each lockout.
    Thread-safe."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._sources: OrderedDict[str, _Attempts] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, source: str) -> float | None:
        """None: this attempt may be evaluated (it is counted); else the whole seconds to wait first."""
        with self._lock:
            now = self._clock()
            record = self._sources.pop(source, None) or _Attempts()
            self._sources[source] = record
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
            if now < record.until_s:
                return float(math.ceil(record.until_s - now))
            if record.count >= FREE_ATTEMPTS:
                wait = min(FIRST_WAIT_S * 2 ** record.lockouts, MAX_WAIT_S)
                record.count, record.lockouts, record.until_s = 0, record.lockouts + 1, now + wait
                return wait
            record.count += 1
            return None

    def succeeded(self, source: str) -> None:
        with self._lock:
            self._sources.pop(source, None)
