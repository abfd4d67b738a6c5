"""Pacing, counting and end-of-replay handling shared by the folder and video sources."""
from __future__ import annotations

import logging
import threading
import time
import numpy as np

from edge.capture.base import STATE_ENDED, STATE_RECONNECTING, STATE_RUNNING, Frame, StateCallback, notify, to_gray
from edge.capture.settings import ReplaySettings

logger = logging.getLogger(__name__)

# How far (in frame periods) replay may fall behind its schedule and still catch up.
PACING_CATCH_UP_PERIODS = 2.0
READ_FAULT_RETRY_S = 1.0  # a frame the machine could not read is tried again after this long


class ReadFault(Exception):
    """No frame now, but the replay has not ended (out of file descriptors, a looping folder where nothing reads):
    the source reports itself away and tries again. Only a finite replay that reached its last file ends."""


class Pacer:
    """Releases frames on a fixed monotonic schedule.

    A consumer that falls a little behind catches up, so the average rate holds; one that falls
    more than PACING_CATCH_UP_PERIODS behind restarts the schedule instead of getting a burst.
    """

    def __init__(self, fps: float) -> None:
        self._period_s = 1.0 / fps if fps > 0 else 0.0
        self._next_due_s: float | None = None

    def seconds_until_due(self) -> float:
        if self._next_due_s is None:
            return 0.0
        return max(0.0, self._next_due_s - time.monotonic())

    def mark_delivered(self) -> None:
        now = time.monotonic()
        if self._next_due_s is None or now - self._next_due_s > self._period_s * PACING_CATCH_UP_PERIODS:
            self._next_due_s = now
        self._next_due_s += self._period_s


class ReplaySource:
    """Base of the replay sources: subclasses supply _next_image() and, if they hold a decoder, _release()."""

    def __init__(self, config: ReplaySettings, grayscale: bool, on_state: StateCallback | None) -> None:
        self.finite = not config.loop
        self._config = config
        self._grayscale = grayscale
        self._on_state = on_state
        self._pacer = Pacer(config.fps)
        self._closed = threading.Event()
        self._io_lock = threading.Lock()  # close() may come from another thread mid-decode
        self._ended = False
        self._delivered = 0
        self._unreadable = 0
        self._read_faults = 0
        self._faulted = False
        self._last_error: str | None = None

    @property
    def exhausted(self) -> bool:
        return self._ended

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame when its time slot comes; None while waiting, after the end, or once closed."""
        if self._ended or self._closed.is_set():
            return None
        wait_s = self._pacer.seconds_until_due()
        if wait_s > timeout_s:
            self._closed.wait(timeout_s)
            return None
        if wait_s > 0 and self._closed.wait(wait_s):
            return None
        try:
            with self._io_lock:
                next_frame = None if self._closed.is_set() else self._next_image()
        except ReadFault as fault:
            self._fault(str(fault))
            self._closed.wait(min(timeout_s, READ_FAULT_RETRY_S))
            return None
        if next_frame is None:
            if self._closed.is_set():
                return None
            self._end()
            return None
        image, name = next_frame
        if self._grayscale:
            image = to_gray(image)
        frame = Frame(image=image, name=name, index=self._delivered, arrival_s=time.monotonic())
        if self._delivered == 0 or self._faulted:
            # until now the station says "starting" (or the source away)
            notify(self._on_state, STATE_RUNNING, "frames flowing" if not self._faulted else "frames flowing again")
            self._faulted = False
        self._delivered += 1
        self._pacer.mark_delivered()
        return frame

    def stats(self) -> dict:
        return {
            "state": STATE_ENDED if self._ended else STATE_RECONNECTING if self._faulted else STATE_RUNNING,
            "dropped": 0,
            "reconnects": 0,
            "unreadable": self._unreadable,
            "read_faults": self._read_faults,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        """Stop replay; a read() waiting for its time slot returns None at once."""
        self._closed.set()
        with self._io_lock:
            self._release()

    def _next_image(self) -> tuple[np.ndarray, str] | None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free decoder resources; called once reads have stopped."""

    def _fault(self, reason: str) -> None:
        self._read_faults += 1
        self._last_error = reason
        if not self._faulted:  # told once per streak: the state says "reconnecting" until a frame comes
            self._faulted = True
            notify(self._on_state, STATE_RECONNECTING, f"{reason}; retrying every {READ_FAULT_RETRY_S:g} s")

    def _end(self) -> None:
        self._ended = True
        detail = f"{self._delivered} frames delivered"
        logger.info("replay finished: %s", detail)
        notify(self._on_state, STATE_ENDED, detail)
