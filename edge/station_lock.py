"""One station per storage.dir: a running daemon holds an exclusive lock on storage.dir/station.lock.

Two daemons on one storage.dir would share one outbox and give the same seqs twice (the plant keeps the first
of a seq, so the other verdict would be lost), and would fight over its evidence, history and stored threshold.
The lock is the kernel's (flock): it goes with the process, even on SIGKILL, so a stale file never blocks a start.
The file holds the holder's pid and, once it is up, the ports it listens on ("web.port 0.0.0.0:8080"), so that
check-config beside it can tell its ports from another program's.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from edge.errors import StorageError

logger = logging.getLogger("lineguard")

LOCK_FILE = "station.lock"
TAKE_TRIES = 20  # over about a second: a check-config probing the lock holds it only for an instant
TAKE_PAUSE_S = 0.05
READ_BYTES = 4096


@dataclass(frozen=True)
class Holder:
    """The station running on a storage.dir: its pid (None when unknown) and the ports it listens on."""

    pid: int | None
    listening: frozenset[str]

    def who(self) -> str:
        return f"pid {self.pid}" if self.pid else "its pid unknown"


class StationLock:
    """The held lock; released by release() or when the process ends."""

    def __init__(self, fd: int, writable: bool) -> None:
        self._fd: int | None = fd
        self._writable = writable

    def record(self, listening: list[str]) -> None:
        """Write the pid and the ports this station listens on (best effort: the lock holds without them)."""
        if self._fd is None or not self._writable:
            return
        text = "\n".join([str(os.getpid()), *listening]) + "\n"
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)
        except OSError:
            pass  # a full disk: messages then say "pid unknown"; the outbox names the fault

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def take(storage_dir: Path) -> StationLock:
    """Lock storage.dir for this process (creating both when missing); StorageError naming the holder when
    another station runs on it (exit 75: systemd tries again once it has gone)."""
    path = Path(storage_dir) / LOCK_FILE
    fd, writable = _open(path, storage_dir)
    for _ in range(TAKE_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(TAKE_PAUSE_S)
    else:
        os.close(fd)
        raise StorageError(busy_text(storage_dir, holder(storage_dir)))
    lock = StationLock(fd, writable)
    lock.record([])
    return lock


def _open(path: Path, storage_dir: Path) -> tuple[int, bool]:
    """The lock file, read-write; read-only when another user's (a run by hand as root left it): flock needs no
    more, the pid is then not written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), True
    except PermissionError:
        pass
    except OSError as exc:
        raise StorageError(f"storage.dir {storage_dir}: cannot open {LOCK_FILE}: {exc.strerror or exc}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"storage.dir {storage_dir}: cannot open {LOCK_FILE}: {exc.strerror or exc} (owner "
                           f"uid {_owner(path)}: remove it, or give it to the service's user)") from None
    logger.warning("%s belongs to uid %s: locked read-only, its pid and ports are not written (give the file to "
                   "this user)", path, _owner(path))
    return fd, False


def _owner(path: Path) -> str:
    try:
        return str(path.stat().st_uid)
    except OSError:
        return "unknown"


def release(lock: StationLock | None) -> None:
    """Release a lock taken by take(), if any."""
    if lock is not None:
        lock.release()


def holder(storage_dir: Path) -> Holder | None:
    """The station running on storage.dir, or None when none is (or the lock file cannot be read)."""
    try:
        fd = os.open(Path(storage_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no station has run there
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            lines = os.pread(fd, READ_BYTES, 0).decode("utf-8", "replace").splitlines()
            pid = int(lines[0]) if lines and lines[0].isdigit() else None
            if pid is None or not Path(f"/proc/{pid}").exists():  # unwritten, or left by an earlier holder
                return Holder(None, frozenset())
            return Holder(pid, frozenset(lines[1:]))
        return None
    finally:
        os.close(fd)  # drops the shared lock, if taken


def busy_text(storage_dir: Path, running: Holder | None) -> str:
    who = running.who() if running is not None else "its pid unknown"
    return (f"storage.dir {storage_dir}: another lineguard station runs on it ({who}); stop it first (its "
            "service: systemctl stop lineguard, or lineguard@NAME) or give this one a storage.dir of its own")
