"""The TCP ports a station listens on, and whether each can be had, asked without keeping it (check-config), in
the words `run` uses when it cannot."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Listener:
    """One port the station listens on: the setting that names it, where, and how it is bound."""

    setting: str  # "web.port", "metrics.port", "io.modbus", "opcua.port"
    host: str
    port: int
    dual_stack: bool  # the page's servers bind "::" for IPv4 too; asyncio's servers (Modbus, OPC UA) IPv6 only

    def __str__(self) -> str:  # as the station lock lists it
        return f"{self.setting} {self.host}:{self.port}"


def listeners(cfg) -> list[Listener]:
    """The ports this config has the station listen on."""
    servers = (("web.port", cfg.web, True), ("metrics.port", cfg.metrics, True),
               ("io.modbus", cfg.io.modbus, False), ("opcua.port", cfg.opcua, False))
    return [Listener(setting, section.host, section.port, dual)
            for setting, section, dual in servers if section.enabled]


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port as the page's servers bind it (OSError when it cannot be)."""
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listen_problem(listener: Listener) -> str | None:
    """"<setting>: cannot listen on host:port: why", or None when the port can be had now."""
    try:
        if listener.dual_stack:
            bind_socket(listener.host, listener.port).close()
        else:
            socket.create_server((listener.host, listener.port), family=family_of(listener.host)).close()
    except OSError as exc:
        return f"{listener.setting}: cannot listen on {listener.host}:{listener.port}: {why(exc)}"
    return None


def why(exc: OSError) -> str:
    """The error in words: create_server adds the address to strerror, a name lookup has a negative errno."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)
