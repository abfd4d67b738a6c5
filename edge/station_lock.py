"""One station per storage.dir: a running daemon holds an exclusive lock on storage.dir/station.lock.

Two daemons on one storage.dir would share one outbox and give the same seqs twice (the plant keeps the first
of a seq, so the other verdict would be lost), and would fight over its evidence, history and stored threshold.
The lock is the kernel's (flock): it goes with the process, even on SIGKILL, so a stale file never blocks a start.
The file holds the holder's pid, for the message that names it.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from edge.errors import StorageError

LOCK_FILE = "station.lock"
TAKE_TRIES = 20  # over about a second: a check-config probing the lock holds it only for an instant
TAKE_PAUSE_S = 0.05


class StationLock:
    """The held lock; released by release() or when the process ends."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def take(storage_dir: Path) -> StationLock:
    """Lock storage.dir for this process (creating both when missing); StorageError naming the holder's pid when
    another station runs on it (exit 75: systemd tries again once it has gone)."""
    path = Path(storage_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"storage.dir {storage_dir}: cannot open {LOCK_FILE}: {exc.strerror or exc}") from None
    for attempt in range(TAKE_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(TAKE_PAUSE_S)
    else:
        os.close(fd)
        raise StorageError(busy_text(storage_dir, holder(storage_dir)))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds without the pid (messages say "pid unknown"); the outbox names the fault
    return StationLock(fd)


def release(lock: StationLock | None) -> None:
    """Release a lock taken by take(), if any."""
    if lock is not None:
        lock.release()


def holder(storage_dir: Path) -> int | None:
    """The pid of the station running on storage.dir (0 when its pid cannot be read), or None when none is."""
    path = Path(storage_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (or none readable): no station has run there as this user
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)  # drops the shared lock, if taken


def busy_text(storage_dir: Path, pid: int | None) -> str:
    who = f"pid {pid}" if pid else "its pid unknown"
    return (f"storage.dir {storage_dir}: another lineguard station runs on it ({who}); stop it first "
            "(sudo systemctl stop lineguard) or give this one a storage.dir of its own")
