"""Atomic file writes: readers see the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
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
