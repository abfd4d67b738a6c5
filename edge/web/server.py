"""uvicorn on a thread of its own inside the daemon: the page never runs in the frame loop.

The socket is bound here, before the thread starts, so a port that is taken is reported at start-up.
"""
from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from edge.errors import StartupError
from edge.ports import bind_socket, why
from edge.web.protocol import limited_protocol

logger = logging.getLogger("lineguard")

STOP_WAIT_S = 5.0


class WebServer:
    """``setting`` names the config keys a bind failure is reported under; ``label`` says what is served."""

    def __init__(self, app, host: str, port: int, read_timeout_s: float = 10.0, max_connections: int = 64,
                 setting: str = "web.port", label: str = "station page", path: str = "") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.label, self.path = label, path
        self.protocol = limited_protocol(read_timeout_s, max_connections, setting)
        self.socket = self._bind(host, port, setting)
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @staticmethod
    def _bind(host: str, port: int, setting: str) -> socket.socket:
        try:
            sock = bind_socket(host, port)
        except OSError as exc:
            raise StartupError(f"{setting}: cannot listen on {host}:{port}: {why(exc)}") from None
        sock.listen(64)
        sock.set_inheritable(True)
        return sock

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else host}:{self.port}/"

    def start(self) -> None:
        # No access log: request lines could carry what a person typed; errors are still logged.
        config = uvicorn.Config(self.app, http=self.protocol, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name=self.label, daemon=True)
        self.thread.start()
        logger.info("%s at %s%s", self.label, self.url, self.path)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(STOP_WAIT_S)
        self.socket.close()
