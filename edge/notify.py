"""systemd service notifications (sd_notify) without libsystemd or an extra package.

Under ``Type=notify`` systemd passes the address of a datagram socket in ``NOTIFY_SOCKET``; the
service reports state changes by sending newline-separated ``KEY=value`` assignments to it:
``READY=1`` once it serves, ``STATUS=...`` free text shown by ``systemctl status``, ``RELOADING=1``
and ``STOPPING=1`` around a reload or shutdown, and ``WATCHDOG=1`` keep-alives when ``WatchdogSec=``
is set (systemd passes the timeout in ``WATCHDOG_USEC``).

Outside systemd ``NOTIFY_SOCKET`` is unset and every call is a no-op, so the daemon calls these
unconditionally. Sending never raises: a lost notification must not stop inspection.

The watchdog proves that inspections complete, so ping() belongs after each completed inspection
in the inspection loop, never in a timer thread that would keep pinging while the loop hangs.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from edge.text import one_line

logger = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

USEC_PER_S = 1_000_000
# Ping at most this often relative to the timeout; systemd's documentation advises half.
PING_FRACTION_OF_TIMEOUT = 0.5
# systemd drains its socket quickly; a stuck send must not stall the inspection loop.
SEND_TIMEOUT_S = 1.0


def _socket_address(value: str | None) -> str | None:
    """The AF_UNIX address for a NOTIFY_SOCKET value, or None when unusable.

    A leading "@" names a socket in the abstract namespace (leading NUL byte).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Newer systemd may pass other transports (e.g. "vsock:..."); not used on this device.
    logger.warning("%s=%r is not a unix socket path; notifications disabled", NOTIFY_SOCKET_ENV, value)
    return None


def _watchdog_timeout_s(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout for this process in seconds, or None when the watchdog is off.

    Follows sd_watchdog_enabled(): WATCHDOG_PID, when present, names the only process meant to ping.
    """
    usec_text = env.get(WATCHDOG_USEC_ENV)
    if not usec_text:
        return None
    pid_text = env.get(WATCHDOG_PID_ENV)
    if pid_text and pid_text.strip() != str(os.getpid()):
        logger.debug("%s=%s is another process; watchdog pings disabled", WATCHDOG_PID_ENV, pid_text)
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        usec = 0
    if usec <= 0:
        logger.warning("ignoring invalid %s=%r", WATCHDOG_USEC_ENV, usec_text)
        return None
    return usec / USEC_PER_S


class SystemdNotifier:
    """Sends sd_notify messages to the socket systemd passed in the environment.

    ``enabled`` is False when NOTIFY_SOCKET is unset (not started by systemd): every call is a no-op.
    ``watchdog_interval_s`` is the watchdog timeout (WatchdogSec=), or None when the watchdog is off
    for this process; ping() then does nothing.

    ping() is meant for one thread, the inspection loop; the other calls may come from any thread.
    """

    def __init__(
        self, env: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from ``env`` (default: os.environ).

        ``clock`` returns monotonic seconds and paces ping().
        """
        env = os.environ if env is None else env
        self._address = _socket_address(env.get(NOTIFY_SOCKET_ENV))
        self.enabled: bool = self._address is not None
        self.watchdog_interval_s: float | None = _watchdog_timeout_s(env) if self.enabled else None
        self._clock = clock
        self._last_ping_s: float | None = None
        if self.enabled:
            logger.debug(
                "notifying %r, watchdog timeout %s s", env.get(NOTIFY_SOCKET_ENV), self.watchdog_interval_s
            )

    def ready(self, status: str | None = None) -> None:
        """Report start-up (or a reload) complete, optionally with a status line."""
        message = "READY=1"
        if status is not None:
            message += "\nSTATUS=" + one_line(status)
        self._send(message)

    def status(self, text: str) -> None:
        """Set the free-text status shown by ``systemctl status``."""
        self._send("STATUS=" + one_line(text))

    def stopping(self) -> None:
        """Report that shutdown has begun."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """Report that a reload has begun; call ready() when it is done.

        systemd 253+ needs MONOTONIC_USEC (CLOCK_MONOTONIC) to match the message to the reload;
        older versions ignore both assignments.
        """
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def ping(self) -> None:
        """Send a watchdog keep-alive, at most once per half watchdog timeout."""
        if self.watchdog_interval_s is None:
            return
        now_s = self._clock()
        min_gap_s = self.watchdog_interval_s * PING_FRACTION_OF_TIMEOUT
        if self._last_ping_s is not None and now_s - self._last_ping_s < min_gap_s:
            return
        self._last_ping_s = now_s
        self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        """Send one datagram; failures are logged at debug level and swallowed."""
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(message.encode("utf-8", errors="replace"), self._address)
        except OSError as exc:
            logger.debug("sd_notify %r failed: %s", message.partition("\n")[0], exc)
