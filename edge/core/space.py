"""Free space on the file system that storage.dir shares between the outbox and the station's folders.

The outbox wins: evidence and feedback files are refused once free space would fall below storage.reserve_mb,
so the outbox alone may use the reserve, and verdicts keep being recorded while the folders wait.
"""
from __future__ import annotations

import os
from pathlib import Path


def free_bytes(folder: Path) -> int:
    """Space an unprivileged writer may still use on the file system holding ``folder`` (or its nearest
    existing parent: a folder not yet made lives where it will be made)."""
    folder = Path(folder)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def reserve_problem(folder: Path, size: int, reserve_bytes: int) -> str | None:
    """Why writing ``size`` bytes into ``folder`` would take the outbox's reserve; None when it would not."""
    free = free_bytes(folder)
    if free - size >= reserve_bytes:
        return None
    return (f"{free / 1e6:.1f} MB free on the file system of {folder}, below storage.reserve_mb "
            f"({reserve_bytes / 1e6:g} MB), which is kept for the outbox")


def folder_bytes(folder: Path) -> int:
    """Bytes in the regular files under ``folder`` (0 when it does not exist)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # removed while counting
            continue
    return total
