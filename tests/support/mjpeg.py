"""An IP-camera stand-in for tests: multipart JPEG over HTTP on 127.0.0.1 that can stop, restart on its
port, or stall with the connection open."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import BinaryIO

import cv2
import numpy as np

POLL_INTERVAL_S = 0.02
WAIT_LIMIT_S = 5.0
FRAME_HEIGHT = 48
FRAME_WIDTH = 64


def solid_image(level: int) -> np.ndarray:
    return np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), level % 256, np.uint8)


class _MjpegHandler(http.server.BaseHTTPRequestHandler):
    server: _MjpegHttpServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        self.server.stream_frames(self.wfile)


class _MjpegHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, fps: float, paused: threading.Event, stalled: threading.Event,
                 image: Callable[[int], np.ndarray]) -> None:
        super().__init__(("127.0.0.1", port), _MjpegHandler)
        self.image = image
        self.closing = threading.Event()
        self.paused = paused
        self.stalled = stalled
        self.sent = 0  # frames written on the current connection
        self.period_s = 1.0 / fps

    def stream_frames(self, out: BinaryIO) -> None:
        counter = 0
        self.sent = 0
        try:
            while not self.closing.is_set():
                if self.paused.is_set():
                    self.stalled.set()  # from here on no byte flows until paused is cleared
                    self.closing.wait(POLL_INTERVAL_S)
                    continue
                self.stalled.clear()
                _, jpeg = cv2.imencode(".jpg", self.image(counter))
                data = jpeg.tobytes()
                out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
                out.write(data + b"\r\n")
                out.flush()
                counter += 1
                self.sent = counter
                self.closing.wait(self.period_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


class MjpegServer:
    """An IP-camera stand-in: multipart JPEG over HTTP; can stop, restart on the same port, or stall."""

    def __init__(self, fps: float = 50.0, image: Callable[[int], np.ndarray] = solid_image) -> None:
        """``image(counter)`` is the picture of each frame sent (by default a grey level that counts)."""
        self._fps = fps
        self._image = image
        self._server: _MjpegHttpServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.paused = threading.Event()
        self.stalled = threading.Event()  # set once the server has seen `paused` and stopped writing

    @property
    def sent(self) -> int:
        """Frames written on the current connection so far."""
        return self._server.sent if self._server is not None else 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        self._server = _MjpegHttpServer(self.port, self._fps, self.paused, self.stalled, self._image)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL_S,), name="mjpeg-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT_LIMIT_S)
        self._server = None
