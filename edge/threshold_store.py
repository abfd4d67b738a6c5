"""A threshold set by command (MQTT `cmd/threshold`, the station page or `lineguard threshold`), kept in
storage.dir so that a reload or a restart does not silently undo it.

The stored threshold outranks inference.threshold and the bundle's calibrated one until it is cleared
(`cmd/threshold_reset`, the page's "back to the bundle's threshold", `lineguard threshold --reset`). At start
and on reload it is checked against the running bundle's Calibration.threshold_range: a stored threshold out of
range stops the start (exit 78) or refuses the reload, naming the file, never a silent fallback.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from edge.core.files import write_json_atomic
from edge.publish.messages import utc_now

logger = logging.getLogger("lineguard")

THRESHOLD_FILE = "threshold.json"
MAX_FILE_BYTES = 64 * 1024


class StoredThresholdError(ValueError):
    """The threshold file exists but cannot be used; str() names the file and the problem."""


def threshold_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / THRESHOLD_FILE


def load_threshold(storage_dir: Path) -> dict | None:
    """The stored record ({"threshold", "model", "set_by", "ts"}) or None when none is stored."""
    path = threshold_path(storage_dir)
    try:
        raw = path.read_bytes()[:MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoredThresholdError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        record = json.loads(raw.decode("utf-8"))
        value = record["threshold"]
    except (ValueError, KeyError, TypeError):
        raise StoredThresholdError(f"{path}: not a stored threshold (JSON object with a 'threshold' number); "
                                   "delete it or run `lineguard threshold --reset`") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise StoredThresholdError(f"{path}: threshold {value!r} is not a finite number > 0")
    return record


def save_threshold(storage_dir: Path, threshold: float, model: dict, set_by: str) -> None:
    """Store atomically; raises OSError when storage.dir cannot take it."""
    write_json_atomic(threshold_path(storage_dir), {"threshold": threshold, "model": model, "set_by": set_by,
                                                    "ts": utc_now()})


def clear_threshold(storage_dir: Path) -> bool:
    """Remove the stored threshold; True if there was one."""
    try:
        threshold_path(storage_dir).unlink()
        return True
    except FileNotFoundError:
        return False


def stored_threshold_problem(record: dict, calibration, model_name: str, storage_dir: Path) -> str | None:
    """Why the stored threshold cannot run with this model, or None."""
    problem = calibration.threshold_problem(float(record["threshold"]), model_name)
    if problem is None:
        return None
    return (f"{threshold_path(storage_dir)}: stored {problem}; clear it with `lineguard threshold --reset` "
            "(or delete the file) to go back to the configured or bundle threshold")
