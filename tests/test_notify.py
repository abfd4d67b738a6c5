"""SystemdNotifier against real AF_UNIX datagram sockets, as systemd provides them."""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.notify import SystemdNotifier

RECV_TIMEOUT_S = 1.0
WATCHDOG_USEC = 200_000  # pings at most every 0.1 s
MAX_DATAGRAM_BYTES = 4096


class Listener:
    """The receiving end of a notify socket, standing in for systemd."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what systemd would put in NOTIFY_SOCKET

    def recv(self) -> bytes:
        """The next datagram; fails the test if none arrives in time."""
        self.sock.settimeout(RECV_TIMEOUT_S)
        return self.sock.recv(MAX_DATAGRAM_BYTES)

    def drain(self) -> list[bytes]:
        """All datagrams already queued, without waiting."""
        self.sock.setblocking(False)
        received = []
        try:
            while True:
                received.append(self.sock.recv(MAX_DATAGRAM_BYTES))
        except BlockingIOError:
            return received


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """A datagram socket bound to a file in tmp_path."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    """A datagram socket in the abstract namespace, named "@..." in NOTIFY_SOCKET."""
    name = f"lineguard-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Listener(sock, "@" + name)


def notifier_for(listener: Listener, **extra_env: str) -> SystemdNotifier:
    """A notifier pointed at ``listener`` with the given extra environment."""
    return SystemdNotifier(env={"NOTIFY_SOCKET": listener.env_value, **extra_env})


def test_ready_sends_exact_bytes(listener: Listener) -> None:
    notifier = notifier_for(listener)
    assert notifier.enabled
    notifier.ready()
    assert listener.recv() == b"READY=1"


def test_ready_with_status(listener: Listener) -> None:
    notifier_for(listener).ready("inspecting camera /dev/video0")
    assert listener.recv() == b"READY=1\nSTATUS=inspecting camera /dev/video0"


def test_status_stopping_and_reloading(listener: Listener) -> None:
    notifier = notifier_for(listener)
    notifier.status("model v3 loaded")
    notifier.stopping()
    before_usec = time.monotonic_ns() // 1000
    notifier.reloading()
    after_usec = time.monotonic_ns() // 1000

    assert listener.recv() == b"STATUS=model v3 loaded"
    assert listener.recv() == b"STOPPING=1"
    reload_lines = listener.recv().decode().split("\n")
    assert reload_lines[0] == "RELOADING=1"
    key, _, value = reload_lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before_usec <= int(value) <= after_usec
    assert len(reload_lines) == 2


def test_status_newlines_cannot_inject_assignments(listener: Listener) -> None:
    notifier_for(listener).status("camera lost\nREADY=1")
    assert listener.recv() == b"STATUS=camera lost; READY=1"


def test_unicode_status(listener: Listener) -> None:
    notifier_for(listener).status("Prüfung läuft")
    assert listener.recv() == "STATUS=Prüfung läuft".encode()


def test_abstract_namespace_socket(abstract_listener: Listener) -> None:
    notifier = notifier_for(abstract_listener, WATCHDOG_USEC="30000000")
    assert notifier.enabled
    notifier.ready()
    notifier.ping()
    assert abstract_listener.recv() == b"READY=1"
    assert abstract_listener.recv() == b"WATCHDOG=1"


def test_reads_os_environ_by_default(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = SystemdNotifier()
    assert notifier.enabled
    assert notifier.watchdog_interval_s == pytest.approx(30.0)
    notifier.ping()
    assert listener.recv() == b"WATCHDOG=1"


def test_ping_is_rate_limited_to_half_the_timeout(listener: Listener) -> None:
    # A 2 s watchdog: pings at most every second, wide enough for a loaded machine.
    notifier = notifier_for(listener, WATCHDOG_USEC="2000000")
    assert notifier.watchdog_interval_s == pytest.approx(2.0)

    start_s = time.monotonic()
    notifier.ping()
    while time.monotonic() - start_s < 0.2:
        notifier.ping()
    assert listener.recv() == b"WATCHDOG=1"
    assert listener.drain() == []

    time.sleep(1.05)
    notifier.ping()
    notifier.ping()
    assert listener.recv() == b"WATCHDOG=1"
    assert listener.drain() == []


def test_ping_rate_limit_with_fake_clock(listener: Listener) -> None:
    now_s = [100.0]
    notifier = SystemdNotifier(
        env={"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "30000000"}, clock=lambda: now_s[0]
    )
    sent = 0
    for _ in range(61):  # one ping a second for a minute
        notifier.ping()
        sent += len(listener.drain())
        now_s[0] += 1.0
    assert sent == 5  # at 0, 15, 30, 45 and 60 s


def test_ping_without_watchdog_sends_nothing(listener: Listener) -> None:
    notifier = notifier_for(listener)
    assert notifier.watchdog_interval_s is None
    notifier.ping()
    assert listener.drain() == []


def test_watchdog_pid_of_another_process_disables_watchdog(listener: Listener) -> None:
    other_pid = str(os.getpid() + 1)
    notifier = notifier_for(listener, WATCHDOG_USEC="30000000", WATCHDOG_PID=other_pid)
    assert notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ping()
    notifier.ready()
    assert listener.recv() == b"READY=1"  # state notifications still go out
    assert listener.drain() == []


def test_watchdog_pid_of_this_process_enables_watchdog(listener: Listener) -> None:
    notifier = notifier_for(listener, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval_s == pytest.approx(30.0)
    notifier.ping()
    assert listener.recv() == b"WATCHDOG=1"


@pytest.mark.parametrize("usec", ["0", "-5", "soon", ""])
def test_invalid_watchdog_usec_disables_watchdog(listener: Listener, usec: str) -> None:
    assert notifier_for(listener, WATCHDOG_USEC=usec).watchdog_interval_s is None


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")

    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("no socket may be created without NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)
    for notifier in (SystemdNotifier(), SystemdNotifier(env={})):
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        notifier.ready("x")
        notifier.status("x")
        notifier.reloading()
        notifier.stopping()
        notifier.ping()


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge.notify"):
        notifier = SystemdNotifier(env={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "NOTIFY_SOCKET" in caplog.text


def test_send_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "1"})
    with caplog.at_level(logging.DEBUG, logger="edge.notify"):
        notifier.ready("up")
        notifier.ping()
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.DEBUG, logging.DEBUG]
    assert "READY=1" in failures[0].getMessage()
