"""A threshold set by command (MQTT `cmd/threshold`, the station page or `lineguard threshold`), kept in
storage.dir so that a reload or a restart does not silently undo it.

The stored threshold outranks inference.threshold and the bundle's calibrated one until it is cleared
(`cmd/threshold_reset`, the page's "back to the bundle's threshold", `lineguard threshold --reset`). It is bound
to the model it was set for, by that model's sha256: a score scale belongs to one model, so a stored threshold
naming another model, or none (hand-written or from before the binding), is never applied. It is dropped loudly
instead (edge.startup): a warning naming both models and thresholds, the file renamed aside, the event on the
state topic. A stored threshold of the running model is checked against its Calibration.threshold_range; a
file that cannot be read as one (not a regular small file, not JSON, not a finite number > 0) stops the start
(exit 78) or refuses the reload, naming the file: a person looks at it, nothing guesses.
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.core.files import read_limited, write_json_atomic
from edge.publish.messages import utc_now

logger = logging.getLogger("lineguard")

THRESHOLD_FILE = "threshold.json"
MAX_FILE_BYTES = 64 * 1024  # a record is about 200 bytes
FIX_HINT = "delete it or run `lineguard threshold --reset`"


class StoredThresholdError(ValueError):
    """The threshold file exists but cannot be used; str() names the file and the problem."""


def threshold_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / THRESHOLD_FILE


def load_threshold(storage_dir: Path) -> dict | None:
    """The stored record ({"threshold", "model", "set_by", "ts"}) or None when none is stored. Read bounded, from
    a regular file only, as the config is (a FIFO cannot hang it, /dev/zero cannot fill the memory)."""
    path = threshold_path(storage_dir)
    record = read_stored(path, MAX_FILE_BYTES, "threshold", StoredThresholdError,
                         "stored threshold (JSON object with a 'threshold' number)", FIX_HINT)
    if record is not None:
        record["threshold"] = _positive_number(path, record["threshold"])
    return record


def read_stored(path: Path, max_bytes: int, key: str, error: type[ValueError], what: str,
                fix_hint: str) -> dict | None:
    """A stored record (threshold or mask): a JSON object holding `key`, read bounded from a regular file; None
    when there is none. Anything else raises `error` naming the file, what it should be and the fix."""
    try:
        raw = read_limited(path, max_bytes)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}; {fix_hint}") from None
    try:
        record = json.loads(raw.decode("utf-8"))
        record[key]  # a list, a string or a number instead of an object raises TypeError
    except (ValueError, RecursionError, KeyError, TypeError, IndexError):  # ValueError: bad UTF-8 or JSON
        raise error(f"{path}: not a {what}; {fix_hint}") from None
    return record


def _positive_number(path: Path, value) -> float:
    try:  # an integer of hundreds of digits overflows float(); NaN, Infinity and 1e400 are not finite
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:20]}… ({len(repr(value))} characters)"
        raise StoredThresholdError(f"{path}: threshold {shown} is not a finite number > 0; {FIX_HINT}")
    return number


def save_threshold(storage_dir: Path, threshold: float, model: dict, set_by: str) -> None:
    """Store atomically, bound to ``model`` (its name and sha256); raises OSError when storage.dir cannot take it."""
    write_json_atomic(threshold_path(storage_dir), {"threshold": threshold, "model": model, "set_by": set_by,
                                                    "ts": utc_now()})


def clear_threshold(storage_dir: Path) -> bool:
    """Remove the stored threshold; True if there was one."""
    return remove_stored(threshold_path(storage_dir))


def remove_stored(path: Path) -> bool:
    """Remove a stored record (threshold or mask); True if there was one."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def rename_aside(path: Path) -> Path | None:
    """Rename a dropped record to <name>.dropped-<time>-<id> (kept for a person; unique, never over an earlier
    one); None when it cannot be, which only leaves it to be dropped again at the next start."""
    stamp = f"{utc_now().replace(':', '')}-{uuid.uuid4().hex[:6]}"
    aside = path.with_name(f"{path.name}.dropped-{stamp}")
    try:
        os.replace(path, aside)
        return aside
    except OSError as exc:
        logger.warning("%s: cannot rename it aside: %s", path, exc.strerror or exc)
        return None


def stored_model(record: dict) -> dict:
    """The model a record names: {"name", "sha256"}, each None when the record does not say."""
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    return {key: model.get(key) if isinstance(model.get(key), str) else None for key in ("name", "sha256")}


def stored_threshold_problem(record: dict, calibration, model_name: str, storage_dir: Path) -> str | None:
    """Why a stored threshold of the running model cannot run with it, or None."""
    problem = calibration.threshold_problem(record["threshold"], model_name)
    if problem is None:
        return None
    return (f"{threshold_path(storage_dir)}: stored {problem}; clear it with `lineguard threshold --reset` "
            "(or delete the file) to go back to the configured or bundle threshold")


@dataclass(frozen=True)
class DroppedThreshold:
    """A stored threshold not applied because it is not the running model's; ``used`` is what runs instead."""

    path: Path
    threshold: float
    model: dict  # what the record names: {"name", "sha256"} (None each when it does not say)
    running: dict  # the running model's {"name", "sha256"}
    used: float

    def message(self) -> str:
        was = (f"was set for model {self.model['name'] or '?'} (sha256 {self.model['sha256']})"
               if self.model["sha256"] else "names no model sha256, so whose scale it is cannot be told")
        return (f"{self.path}: stored threshold {self.threshold:g} {was}; dropped for model {self.running['name']} "
                f"(sha256 {self.running['sha256']}), which runs with threshold {self.used:.6g}")

    def payload(self) -> dict:
        """For the state topic: which threshold was dropped, whose it was, when."""
        return {"threshold": self.threshold, "model": self.model, "running_model": self.running,
                "threshold_used": self.used, "ts": utc_now()}

    def set_aside(self) -> Path | None:
        """Rename the file aside (kept for a person); None when it cannot be, which only leaves it to be dropped
        again at the next start: it is never applied to a model it does not name."""
        from edge.threshold_audit import record_change

        record_change(self.path.parent, "station", "dropped", self.threshold, self.used,
                      "set for another model: not applied", self.running["sha256"])
        return rename_aside(self.path)
