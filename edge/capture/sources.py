"""Frame sources: folder and video replay for trials, camera and network streams on the line.

Replay sources (folder, video) deliver every frame in order, paced on a monotonic schedule.
Live sources (camera, stream, gstreamer) run a grabber thread that keeps only the newest frame,
so inspection always sees the present; a frame replaced before it was read counts as dropped.
A live source never raises from read(): when the device or server fails, stalls or ends, it is
released and reopened with exponential backoff, and each state change goes to ``on_state``.

How long close() can take for a live source: the grabber checks its stop event between reads
and sleeps its backoff on that event, so it stops within one frame interval. Only a blocked
driver call delays it, and that is bounded: FFmpeg and GStreamer opens/reads time out after
``read_timeout_s``; V4L2 reads time out after OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT seconds, which this
module sets to ``read_timeout_s`` (rounded up) unless the environment already sets it.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from edge.core.preprocess import IMAGE_SUFFIXES, image_files

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("folder", "video", "camera", "stream", "gstreamer")
LIVE_KINDS = ("camera", "stream", "gstreamer")

STATE_RUNNING = "running"
STATE_RECONNECTING = "reconnecting"
STATE_ENDED = "ended"

# How far (in frame periods) replay may fall behind its schedule and still catch up.
PACING_CATCH_UP_PERIODS = 2.0
# Folder replay decodes the next file on a second thread while the current frame is inspected, when files
# are this large on average (a 256x256 PNG takes about a millisecond to decode); tiny files decode faster
# than a hand-over between threads costs.
PREFETCH_MIN_MEAN_BYTES = 16 * 1024
PREFETCH_SAMPLE_FILES = 8
# Extra time close() grants a grabber blocked in a driver call beyond its own timeout.
CLOSE_JOIN_MARGIN_S = 1.0
V4L2_SELECT_TIMEOUT_ENV = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"
_USERINFO_PATTERN = re.compile(r"(//[^/:@]*):[^/]*@")  # greedy to the last '@': passwords may contain '@'

StateCallback = Callable[[str, str], None]


class CaptureError(Exception):
    """A source that can never work (missing folder or file, unsupported backend); names the path or url."""


@dataclass
class Frame:
    """One captured image and where it came from."""

    image: np.ndarray  # HxW uint8 (gray) or HxWx3 BGR uint8, as captured
    name: str  # folder: file name; video: "<file>#<frame in file>"; live: "<kind>#<capture counter>"
    index: int  # 0-based count of frames delivered by this source
    arrival_s: float  # time.monotonic() when the frame was captured or read


@dataclass
class SourceSettings:
    """Where frames come from and how to pace, size and recover them."""

    kind: str  # folder | video | camera | stream | gstreamer
    path: Path | None = None  # folder or video file
    url: str | None = None  # stream URL, or the GStreamer pipeline (ending in appsink)
    index: int = 0  # camera: V4L2 device index (/dev/video<index>)
    fps: float = 10.0  # replay pace, and the rate requested from a camera; 0 = unpaced
    loop: bool = False  # replay: start again at the end
    width: int | None = None  # camera: requested frame size
    height: int | None = None
    grayscale: bool = False  # deliver HxW gray so the model path skips a conversion
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 30.0
    read_timeout_s: float = 5.0  # live: no frame for this long counts as a stall


@runtime_checkable
class FrameSource(Protocol):
    """What the inspector reads frames from."""

    finite: bool  # True for folder/video replay without loop

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None if none is available within timeout_s (the caller keeps going)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once a finite replay has delivered its last frame."""
        ...

    def stats(self) -> dict:
        """{"state", "dropped", "reconnects", "unreadable", "last_error"}."""
        ...

    def close(self) -> None:
        """Release the source; a live grabber thread stops promptly."""
        ...


def open_source(settings: SourceSettings, on_state: StateCallback | None = None) -> FrameSource:
    """Open the source described by settings.

    Raises CaptureError at once for a source that can never work. Live sources return
    immediately; their first connection happens on the grabber thread, and ``on_state``
    is called from that thread.
    """
    kind = settings.kind
    if kind == "folder":
        return FolderSource(settings, on_state)
    if kind == "video":
        return VideoSource(settings, on_state)
    if kind in LIVE_KINDS:
        return LiveSource(settings, _live_opener(settings), on_state)
    raise CaptureError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")


def gstreamer_available() -> bool:
    """Whether this OpenCV build includes the GStreamer video backend."""
    match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    return bool(match) and match.group(1).upper() != "NO"


def redact_url(url: str) -> str:
    """The url with any password replaced, safe for logs and status messages."""
    return _USERINFO_PATTERN.sub(r"\1:***@", url)


def _notify(on_state: StateCallback | None, state: str, detail: str) -> None:
    if on_state is None:
        return
    try:
        on_state(state, detail)
    except Exception:
        # A faulty listener must not stop capture.
        logger.exception("on_state callback failed for state %s", state)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


class _Pacer:
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


class _ReplaySource:
    """Shared pacing, counting and end-of-replay handling for folder and video sources."""

    def __init__(self, settings: SourceSettings, on_state: StateCallback | None) -> None:
        self.finite = not settings.loop
        self._settings = settings
        self._on_state = on_state
        self._pacer = _Pacer(settings.fps)
        self._closed = threading.Event()
        self._io_lock = threading.Lock()  # close() may come from another thread mid-decode
        self._ended = False
        self._delivered = 0
        self._unreadable = 0
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
        with self._io_lock:
            next_frame = None if self._closed.is_set() else self._next_image()
        if next_frame is None:
            if self._closed.is_set():
                return None
            self._end()
            return None
        image, name = next_frame
        if self._settings.grayscale:
            image = _to_gray(image)
        frame = Frame(image=image, name=name, index=self._delivered, arrival_s=time.monotonic())
        self._delivered += 1
        self._pacer.mark_delivered()
        return frame

    def stats(self) -> dict:
        return {
            "state": STATE_ENDED if self._ended else STATE_RUNNING,
            "dropped": 0,
            "reconnects": 0,
            "unreadable": self._unreadable,
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

    def _end(self) -> None:
        self._ended = True
        detail = f"{self._delivered} frames delivered"
        logger.info("replay finished: %s", detail)
        _notify(self._on_state, STATE_ENDED, detail)


class FolderSource(_ReplaySource):
    """Every image file of a folder in name order; unreadable files are skipped and counted.

    Large files are decoded one ahead on a worker thread (see PREFETCH_MIN_MEAN_BYTES); counting, logging
    and the order of frames happen as each file is taken, exactly as without the worker.
    """

    def __init__(self, settings: SourceSettings, on_state: StateCallback | None = None) -> None:
        super().__init__(settings, on_state)
        self._files = _list_images(settings.path)
        self._position = 0
        self._read_any_this_pass = False
        self._imread_flag = cv2.IMREAD_GRAYSCALE if settings.grayscale else cv2.IMREAD_COLOR
        self._prefetcher = _Prefetcher(self._decode_file) if _worth_prefetching(self._files) else None
        logger.info("replaying %d images from %s", len(self._files), settings.path)

    def _release(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()

    def _next_image(self) -> tuple[np.ndarray, str] | None:
        while True:
            if self._position == len(self._files):
                # A loop over a folder where nothing decodes would spin forever.
                if not (self._settings.loop and self._read_any_this_pass):
                    return None
                self._position = 0
                self._read_any_this_pass = False
            path = self._files[self._position]
            self._position += 1
            image = self._decode(path)
            if image is not None:
                self._read_any_this_pass = True
                self._prefetch_next()
                return image, path.name

    def _prefetch_next(self) -> None:
        if self._prefetcher is None:
            return
        if self._position < len(self._files):
            self._prefetcher.start(self._files[self._position])
        elif self._settings.loop:
            self._prefetcher.start(self._files[0])

    def _decode_file(self, path: Path) -> tuple[np.ndarray | None, str]:
        """Decode one file; no side effects, so it may run on the prefetch thread."""
        try:
            image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), self._imread_flag)
        except (OSError, cv2.error) as exc:
            return None, _one_line(exc)
        return image, "not a decodable image"

    def _decode(self, path: Path) -> np.ndarray | None:
        decoded = self._prefetcher.take(path) if self._prefetcher is not None else None
        image, reason = decoded if decoded is not None else self._decode_file(path)
        if image is None:
            self._unreadable += 1
            self._last_error = f"unreadable image {path}: {reason}"
            logger.warning("skipping unreadable image %s: %s", path, reason)
        return image


class _Prefetcher:
    """Decodes one file ahead on a single worker thread."""

    def __init__(self, decode: Callable[[Path], tuple[np.ndarray | None, str]]) -> None:
        self._decode = decode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-prefetch")
        self._pending: tuple[Path, Future] | None = None

    def start(self, path: Path) -> None:
        try:
            self._pending = (path, self._executor.submit(self._decode, path))
        except RuntimeError:  # closed meanwhile: the caller decodes synchronously
            self._pending = None

    def take(self, path: Path) -> tuple[np.ndarray | None, str] | None:
        """The decoded file if it was prefetched, else None (the caller decodes it itself)."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != path or pending[1].cancelled():
            return None
        return pending[1].result()

    def close(self) -> None:
        self._pending = None
        self._executor.shutdown(wait=False, cancel_futures=True)


def _worth_prefetching(files: list[Path]) -> bool:
    sizes = []
    for path in files[:PREFETCH_SAMPLE_FILES]:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            continue
    return bool(sizes) and sum(sizes) / len(sizes) >= PREFETCH_MIN_MEAN_BYTES


def _list_images(folder: Path | None) -> list[Path]:
    if folder is None:
        raise CaptureError("folder source needs a path")
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptureError(f"image folder not found: {folder}")
    files = image_files(folder)
    if not files:
        # Not an error: a restart on an emptied folder still delivers what the outbox holds.
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        logger.warning("no images (%s) in folder %s: nothing to replay", suffixes, folder)
    return files


class VideoSource(_ReplaySource):
    """Every frame of a video file in order; looping reopens the file."""

    def __init__(self, settings: SourceSettings, on_state: StateCallback | None = None) -> None:
        super().__init__(settings, on_state)
        if settings.path is None:
            raise CaptureError("video source needs a path")
        self._path = Path(settings.path)
        if not self._path.is_file():
            raise CaptureError(f"video file not found: {self._path}")
        self._capture = self._open()
        self._frame_in_file = 0
        logger.info("replaying video %s", self._path)

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self._path))
        if not capture.isOpened():
            capture.release()
            raise CaptureError(f"cannot decode video file: {self._path}")
        return capture

    def _next_image(self) -> tuple[np.ndarray, str] | None:
        if self._capture is None:
            return None
        ok, image = self._capture.read()
        if not ok and self._settings.loop and self._frame_in_file > 0:
            ok, image = self._restart()
        if not ok or image is None:
            self._release()
            return None
        name = f"{self._path.name}#{self._frame_in_file}"
        self._frame_in_file += 1
        return image, name

    def _restart(self) -> tuple[bool, np.ndarray | None]:
        # Reopening is more reliable than seeking for many containers.
        self._release()
        self._frame_in_file = 0
        try:
            self._capture = self._open()
        except CaptureError as exc:
            # The file vanished or broke mid-replay: end the replay rather than fail the caller.
            self._last_error = str(exc)
            logger.warning("video replay stops: %s", exc)
            return False, None
        return self._capture.read()


CaptureOpener = Callable[[], cv2.VideoCapture]


def _live_opener(settings: SourceSettings) -> CaptureOpener:
    """A function that opens the live device or stream once; failures surface as not-opened captures."""
    timeout_ms = int(settings.read_timeout_s * 1000)
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    if settings.kind == "camera":
        # OpenCV reads this once per process, on the first V4L2 wait; the default is 10 s.
        os.environ.setdefault(V4L2_SELECT_TIMEOUT_ENV, str(max(1, math.ceil(settings.read_timeout_s))))
        return lambda: _open_camera(settings)
    if not settings.url:
        raise CaptureError(f"{settings.kind} source needs a url")
    if settings.kind == "stream":
        return lambda: cv2.VideoCapture(settings.url, cv2.CAP_FFMPEG, timeouts)
    if not gstreamer_available():
        raise CaptureError(
            f"gstreamer source {redact_url(settings.url)!r}: this OpenCV build has no GStreamer support "
            "(cv2.getBuildInformation() shows 'GStreamer: NO', as in the pip opencv-python wheels); "
            "use Raspberry Pi OS's python3-opencv package (apt install python3-opencv), which is built with it "
            "(a venv sees it only with --system-site-packages)"
        )
    return lambda: cv2.VideoCapture(settings.url, cv2.CAP_GSTREAMER, timeouts)


def _open_camera(settings: SourceSettings) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(settings.index, cv2.CAP_V4L2)
    if capture.isOpened():
        if settings.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, settings.width)
        if settings.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.height)
        if settings.fps > 0:
            capture.set(cv2.CAP_PROP_FPS, settings.fps)
    return capture


def _live_label(settings: SourceSettings) -> str:
    if settings.kind == "camera":
        return f"camera /dev/video{settings.index}"
    return f"{settings.kind} {redact_url(settings.url or '')}"


class LiveSource:
    """A camera or network stream read by a grabber thread; the newest frame wins.

    Failures (cannot open, read error, stream end, no frame within read_timeout_s) release the
    capture and reopen it after a backoff that doubles from reconnect_initial_s up to
    reconnect_max_s and resets once frames flow again. read() never raises.
    """

    finite = False

    def __init__(
        self, settings: SourceSettings, opener: CaptureOpener, on_state: StateCallback | None = None
    ) -> None:
        self._settings = settings
        self._opener = opener
        self._on_state = on_state
        self._label = _live_label(settings)
        self._lock = threading.Lock()
        self._frame_ready = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._latest: tuple[np.ndarray, int, float] | None = None  # image, capture counter, arrival
        self._captured = 0
        self._delivered = 0
        self._dropped = 0
        self._reconnects = 0
        self._state = STATE_RUNNING
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture-{settings.kind}", daemon=True)
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
        if self._settings.grayscale:
            image = _to_gray(image)
        return Frame(image=image, name=f"{self._settings.kind}#{counter}", index=index, arrival_s=arrival_s)

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
        self._thread.join(self._settings.read_timeout_s + CLOSE_JOIN_MARGIN_S)
        if self._thread.is_alive():
            logger.warning("%s: grabber still blocked in the driver after close", self._label)

    @property
    def grabber_alive(self) -> bool:
        """Whether the grabber thread is still running (it ends soon after close())."""
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff_s = self._settings.reconnect_initial_s
        while not self._stop.is_set():
            why, got_frames = self._capture_session()
            if self._stop.is_set():
                break
            if got_frames:
                backoff_s = self._settings.reconnect_initial_s
            self._set_state(STATE_RECONNECTING, why)
            logger.warning("%s: %s; reopening in %.1f s", self._label, why, backoff_s)
            if self._stop.wait(backoff_s):
                break
            backoff_s = min(backoff_s * 2, self._settings.reconnect_max_s)
            with self._lock:
                self._reconnects += 1
        logger.info("%s: grabber stopped", self._label)

    def _capture_session(self) -> tuple[str, bool]:
        """Open once and grab until failure or stop; returns why it ended and whether frames came."""
        try:
            capture = self._opener()
        except cv2.error as exc:
            return f"cannot open {self._label}: {_one_line(exc)}", False
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
                return f"read error: {_one_line(exc)}", got_frames
            now = time.monotonic()
            if not ok or image is None:
                silent_s = now - last_frame_s
                if silent_s >= self._settings.read_timeout_s:
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
            changed = state != self._state
            self._state = state
            if detail:
                self._last_error = detail
        if changed:
            if state == STATE_RUNNING:
                logger.info("%s: running", self._label)
            _notify(self._on_state, state, detail)
