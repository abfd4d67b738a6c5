"""Live sources (kinds ``camera``, ``stream``, ``gstreamer``): read by a grabber thread, the newest frame wins.

A live source never raises from read(): when the device or server fails, stalls or ends, it is released and
reopened with exponential backoff, and each state change goes to ``on_state``. A frame replaced before it was
read counts as dropped.

How long close() can take: the grabber checks its stop event between reads and sleeps its backoff on that
event, so it stops within one frame interval. Only a blocked driver call delays it, and that is bounded:
FFmpeg and GStreamer opens/reads time out after ``read_timeout_s``; V4L2 reads time out after
OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT seconds, which edge.capture.camera sets to ``read_timeout_s`` (rounded up)
unless the environment already sets it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import cv2
import numpy as np

from edge.capture.base import STATE_RECONNECTING, STATE_RUNNING, Frame, StateCallback, notify, redact_url, to_gray
from edge.capture.settings import LiveSettings
from edge.text import one_line

logger = logging.getLogger(__name__)

# Extra time close() grants a grabber blocked in a driver call beyond its own timeout.
CLOSE_JOIN_MARGIN_S = 1.0

CaptureOpener = Callable[[], cv2.VideoCapture]


def capture_timeouts(config: LiveSettings) -> list[int]:
    """Open and read timeouts for FFmpeg and GStreamer captures, so no driver call blocks for long."""
    timeout_ms = int(config.read_timeout_s * 1000)
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]


class LiveSource:
    """A camera or network stream read by a grabber thread; the newest frame wins.

    Failures (cannot open, read error, stream end, no frame within read_timeout_s) release the
    capture and reopen it after a backoff that doubles from reconnect_initial_s up to
    reconnect_max_s and resets once frames flow again. read() never raises.
    """

    finite = False

    def __init__(self, config: LiveSettings, opener: CaptureOpener, grayscale: bool = False,
                 on_state: StateCallback | None = None) -> None:
        self._config = config
        self._opener = opener
        self._grayscale = grayscale
        self._on_state = on_state
        self._label = config.label()
        self._lock = threading.Lock()
        self._frame_ready = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._latest: tuple[np.ndarray, int, float] | None = None  # image, capture counter, arrival
        self._captured = 0
        self._delivered = 0
        self._dropped = 0
        self._reconnects = 0
        self._state = STATE_RUNNING
        self._running_reported = False  # the station says "starting" until the first frames are reported
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture-{config.kind}", daemon=True)
        self._thread.start()

    @property
    def exhausted(self) -> bool:
        return False

    def read(self, timeout_s: float) -> Frame | None:
        """The newest frame not yet read, waiting up to timeout_s; None if none arrived or closed."""
        with self._frame_ready:
            self._frame_ready.wait_for(lambda: self._latest is not None or self._stop.is_set(), timeout_s)
            if self._latest is None or self._stop.is_set():
                return None
            image, counter, arrival_s = self._latest
            self._latest = None
            index = self._delivered
            self._delivered += 1
        if self._grayscale:
            image = to_gray(image)
        return Frame(image=image, name=f"{self._config.kind}#{counter}", index=index, arrival_s=arrival_s)

    def stats(self) -> dict:
        with self._lock:
            return {
                "state": self._state,
                "dropped": self._dropped,
                "reconnects": self._reconnects,
                "unreadable": 0,
                "last_error": self._last_error,
            }

    def close(self) -> None:
        """Stop the grabber and release the capture; see the module docstring for the time bound."""
        with self._frame_ready:
            self._stop.set()
            self._frame_ready.notify_all()
        if threading.current_thread() is self._thread:
            return
        self._thread.join(self._config.read_timeout_s + CLOSE_JOIN_MARGIN_S)
        if self._thread.is_alive():
            logger.warning("%s: grabber still blocked in the driver after close", self._label)

    @property
    def grabber_alive(self) -> bool:
        """Whether the grabber thread is still running (it ends soon after close())."""
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff_s = self._config.reconnect_initial_s
        while not self._stop.is_set():
            why, got_frames = self._capture_session()
            why = redact_url(why)  # OpenCV's error text may quote the url or pipeline
            if self._stop.is_set():
                break
            if got_frames:
                backoff_s = self._config.reconnect_initial_s
            self._set_state(STATE_RECONNECTING, why)
            logger.warning("%s: %s; reopening in %.1f s", self._label, why, backoff_s)
            if self._stop.wait(backoff_s):
                break
            backoff_s = min(backoff_s * 2, self._config.reconnect_max_s)
            with self._lock:
                self._reconnects += 1
        logger.info("%s: grabber stopped", self._label)

    def _capture_session(self) -> tuple[str, bool]:
        """Open once and grab until failure or stop; returns why it ended and whether frames came."""
        try:
            capture = self._opener()
        except cv2.error as exc:
            return f"cannot open {self._label}: {one_line(exc)}", False
        except OSError as exc:  # an opener that knows why (edge.capture.camera: no such device)
            return f"cannot open {self._label}: {exc.strerror or exc}", False
        try:
            if not capture.isOpened():
                return f"cannot open {self._label}", False
            return self._grab_until_failure(capture)
        finally:
            capture.release()

    def _grab_until_failure(self, capture: cv2.VideoCapture) -> tuple[str, bool]:
        got_frames = False
        last_frame_s = time.monotonic()
        while not self._stop.is_set():
            try:
                ok, image = capture.read()
            except cv2.error as exc:
                return f"read error: {one_line(exc)}", got_frames
            now = time.monotonic()
            if not ok or image is None:
                silent_s = now - last_frame_s
                if silent_s >= self._config.read_timeout_s:
                    return f"stalled: no frame for {silent_s:.1f} s", got_frames
                return "read failed or stream ended", got_frames
            last_frame_s = now
            if not got_frames:
                got_frames = True
                self._set_state(STATE_RUNNING, "")
            self._publish(image, now)
        return "closed", got_frames

    def _publish(self, image: np.ndarray, arrival_s: float) -> None:
        with self._frame_ready:
            if self._latest is not None:
                self._dropped += 1
            self._latest = (image, self._captured, arrival_s)
            self._captured += 1
            self._frame_ready.notify_all()

    def _set_state(self, state: str, detail: str) -> None:
        with self._lock:
            changed = state != self._state or (state == STATE_RUNNING and not self._running_reported)
            self._running_reported |= state == STATE_RUNNING
            self._state = state
            if detail:
                self._last_error = detail
        if changed:
            if state == STATE_RUNNING:
                logger.info("%s: running", self._label)
            notify(self._on_state, state, detail)
