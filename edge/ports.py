"""Whether a TCP port can be listened on, asked without keeping it (check-config), in the words `run` uses."""
from __future__ import annotations

import errno
import os
import socket

IN_USE = os.strerror(errno.EADDRINUSE)  # "Address already in use"


def listen_problem(setting: str, host: str, port: int) -> str | None:
    """"<setting>: cannot listen on host:port: why", or None when the port can be had now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return None
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # create_server adds the address to strerror
        return f"{setting}: cannot listen on {host}:{port}: {why}"


def taken(problem: str) -> bool:
    """Whether a listen_problem line says the port is in use (by another process: perhaps the running station)."""
    return "cannot listen on " in problem and problem.endswith(f": {IN_USE}")
