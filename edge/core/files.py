"""Atomic file writes (readers see the old file or the new one, never half of one) and bounded reads."""
from __future__ import annotations

import errno
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes, make_parents: bool = True) -> None:
    """Write to a unique temporary name beside the target, then rename over it.

    The temporary name is unique so two writers never share one; it is created with the process's usual
    permissions (not mkstemp's owner-only), so a service account can read what a deploy wrote.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON (no NaN or Infinity, which strict readers refuse), indented, with a final newline, written
    atomically. A non-finite number raises ValueError before anything is written: undefined figures are None."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"))


READ_STEP_MIN_BYTES = 64 * 1024


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def read_limited(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most ``max_bytes``, without blocking or reading more.

    A FIFO, device (/dev/zero) or folder is refused before anything is read; opening is non-blocking, so a
    FIFO without a writer cannot hang the caller. Raises OSError whose strerror says what is wrong.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, _not_regular(info.st_mode), os.fspath(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{info.st_size:,} bytes, above the limit of {max_bytes:,}", os.fspath(path))
        # A file that reports no size (/proc) or grows while read is caught by reading one byte past the limit.
        # Reads are sized by what the file says it holds: os.read allocates its whole request up front.
        chunks, total, step = [], 0, max(info.st_size + 1, READ_STEP_MIN_BYTES)
        while total <= max_bytes:
            chunk = os.read(fd, min(step, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > max_bytes:
        raise OSError(errno.EFBIG, f"more than the limit of {max_bytes:,} bytes", os.fspath(path))
    return b"".join(chunks)


def check_regular(path: str | os.PathLike) -> None:
    """OSError when ``path`` exists and is not a regular file: for files a library opens itself (SQLite), which
    would wait on a FIFO or take a device for an empty database. A missing file is the caller's to create."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, _not_regular(mode), os.fspath(path))
