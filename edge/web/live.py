"""What the station page shows, gathered by an inline sink (edge.publish.sinks): the latest verdict, the recent
verdicts, and the frames kept lossless for feedback. The inspection loop only hands over references.
The live picture is rendered only when a viewer asks for it (at most web.live_fps times a second, however
many viewers), so a station nobody watches spends nothing on JPEG encoding."""
from __future__ import annotations

import math
import threading
import time
from collections import deque

import cv2

from edge.feedback import HeldFrame, RecentFrames
from edge.publish.sinks import VerdictEvent, VerdictSink

LIVE_JPEG_QUALITY = 80
FAIL_COLOR_BGR = (0, 0, 255)
PASS_COLOR_BGR = (0, 180, 0)
UNSCORABLE_COLOR_BGR = (0, 200, 255)
BANNER_PX = 22


class LiveView:
    """The latest verdict and, on demand, its picture; readers wait on ``changed`` for the next. Thread-safe."""

    def __init__(self, render, min_interval_s: float) -> None:
        self.render = render
        self.min_interval_s = min_interval_s  # however fast viewers ask, at most web.live_fps renders a second
        self.meta: dict | None = None
        self.version = 0
        self.closed = False  # the server stops: viewers' streams end
        self.changed = threading.Condition()
        self._event: VerdictEvent | None = None
        self._picture: tuple[int, bytes] = (0, b"")
        self._rendered_s = -math.inf
        self._render_lock = threading.Lock()

    def publish(self, event: VerdictEvent, meta: dict) -> None:
        with self.changed:
            self._event, self.meta = event, meta
            self.version += 1
            self.changed.notify_all()

    def wait_newer(self, version: int, timeout_s: float) -> int:
        """The current version once it is newer than ``version`` (or after timeout_s, or on close)."""
        with self.changed:
            self.changed.wait_for(lambda: self.version > version or self.closed, timeout_s)
            return self.version

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def picture(self) -> bytes:
        """The latest verdict's picture as JPEG, rendered once per verdict however many viewers ask."""
        with self._render_lock:
            with self.changed:
                event, version = self._event, self.version
            now = time.monotonic()
            if event is not None and self._picture[0] != version and now - self._rendered_s >= self.min_interval_s:
                self._picture, self._rendered_s = (version, self.render(event)), now
            return self._picture[1]


class LiveSink(VerdictSink):
    """Feeds the station page. Inline: it only keeps references (a deque entry, a held frame, the latest event),
    cheaper than handing each verdict to a thread; the JPEG is encoded later, by a viewer's request."""

    name = "web"
    inline = True

    def __init__(self, recent_verdicts: int, frames: RecentFrames | None, roi_of, live_fps: float) -> None:
        self.live = LiveView(self.picture, 1.0 / live_fps)
        self.recent: deque[dict] = deque(maxlen=recent_verdicts)
        self.frames = frames
        self.roi_of = roi_of  # the running inference.roi, for drawing region boxes on the model's view
        self.started = threading.Event()

    def on_start(self) -> None:
        self.started.set()

    def on_verdict(self, event: VerdictEvent) -> None:
        verdict = event.message
        self.recent.append(verdict)
        if self.frames is not None:
            self.frames.add(HeldFrame(event.seq, event.image, event.image_name, event.result.score,
                                      event.result.verdict, event.result.threshold, verdict["model"], verdict["ts"]))
        self.live.publish(event, verdict)

    def picture(self, event: VerdictEvent) -> bytes:
        """The overlay with region boxes and a verdict banner, as JPEG."""
        image = event.overlay().copy()
        verdict = event.result.verdict
        color = {"fail": FAIL_COLOR_BGR, "pass": PASS_COLOR_BGR}.get(verdict, UNSCORABLE_COLOR_BGR)
        for x, y, w, h in self._boxes(event, image.shape):
            cv2.rectangle(image, (x, y), (x + w, y + h), FAIL_COLOR_BGR, 2)
        if verdict == "fail":
            cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), FAIL_COLOR_BGR, 4)
        cv2.rectangle(image, (0, 0), (image.shape[1], BANNER_PX), color, -1)
        cv2.putText(image, f"{verdict.upper()} {event.result.score:.4g}", (4, BANNER_PX - 6),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, LIVE_JPEG_QUALITY])
        return jpeg.tobytes() if ok else b""

    def _boxes(self, event: VerdictEvent, shape) -> list[tuple[int, int, int, int]]:
        """Regions (source-frame pixels) mapped onto the overlay (the model's view of the cropped frame)."""
        ox = oy = 0
        height, width = event.image.shape[:2]
        for roi in (self.roi_of(), event.spec.roi):
            if roi is not None:
                ox, oy, width, height = ox + roi[0], oy + roi[1], roi[2], roi[3]
        fx, fy = shape[1] / width, shape[0] / height
        return [(int((r["x"] - ox) * fx), int((r["y"] - oy) * fy), max(1, int(r["w"] * fx)), max(1, int(r["h"] * fy)))
                for r in event.result.regions]
