"""Ignore polygons drawn on the station page (or sent as MQTT `cmd/mask`), kept in storage.dir/mask.json so that
a reload or a restart does not silently undo them.

The stored polygons ADD to the config's inference.ignore_polygons (and the bundle's own); they are in frame
pixels, like the config's. They are bound to the model they were drawn for, by its sha256: a mask naming another
model, or none, is never applied but dropped loudly (a warning, the file renamed aside, the event on the state
topic), like a stored threshold (edge.threshold_store). A file that cannot be read as a mask (not a regular small
file, not JSON, bad polygons) stops the start (exit 78) or refuses the reload, naming the file.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from edge.core.files import write_json_atomic
from edge.publish.messages import model_ref, utc_now
from edge.threshold_store import read_stored, remove_stored, rename_aside, stored_model

logger = logging.getLogger("lineguard")

MASK_FILE = "mask.json"
MAX_FILE_BYTES = 256 * 1024
MAX_POLYGONS = 32
MAX_POINTS = 64
MAX_COORDINATE = 100_000  # frame pixels, when the frame size is not known yet
FIX_HINT = "delete it or remove the stored mask (the page's \"Remove stored mask\", MQTT cmd/mask_reset)"

Polygon = list[tuple[float, float]]


class StoredMaskError(ValueError):
    """The mask file exists but cannot be used; str() names the file and the problem."""


def mask_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / MASK_FILE


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_polygons(value, frame_size: tuple[int, int] | None = None) -> list[Polygon]:
    """Polygons as [[x, y], ...] lists in frame pixels, checked; ValueError with a one-line reason.
    ``frame_size`` (height, width): every point must lie within the frame (its edges included)."""
    if not isinstance(value, list):
        raise ValueError("polygons must be a list of polygons, each a list of [x, y] points")
    if len(value) > MAX_POLYGONS:
        raise ValueError(f"{len(value)} polygons: at most {MAX_POLYGONS}")
    height, width = frame_size if frame_size is not None else (MAX_COORDINATE, MAX_COORDINATE)
    polygons = []
    for index, polygon in enumerate(value):
        if not isinstance(polygon, list) or not 3 <= len(polygon) <= MAX_POINTS:
            count = len(polygon) if isinstance(polygon, list) else "no"
            raise ValueError(f"polygon {index}: {count} points; a polygon has 3 to {MAX_POINTS} [x, y] points")
        points = []
        for point in polygon:
            xy = [_number(v) for v in point] if isinstance(point, list) and len(point) == 2 else [None]
            if None in xy:
                raise ValueError(f"polygon {index}: a point is not [x, y] with two finite numbers")
            if not (0 <= xy[0] <= width and 0 <= xy[1] <= height):
                raise ValueError(f"polygon {index}: point ({xy[0]:g}, {xy[1]:g}) is outside the frame "
                                 f"({width} x {height} pixels)")
            points.append((xy[0], xy[1]))
        polygons.append(points)
    return polygons


def load_mask(storage_dir: Path) -> dict | None:
    """The stored record ({"polygons", "model", "set_by", "ts"}) or None when none is stored. Read bounded, from
    a regular file only (a FIFO cannot hang it, /dev/zero cannot fill the memory)."""
    path = mask_path(storage_dir)
    record = read_stored(path, MAX_FILE_BYTES, "polygons", StoredMaskError,
                         "stored mask (JSON object with 'polygons')", FIX_HINT)
    if record is None:
        return None
    try:
        record["polygons"] = check_polygons(record["polygons"])
    except ValueError as exc:
        raise StoredMaskError(f"{path}: {exc}; {FIX_HINT}") from None
    return record


def save_mask(storage_dir: Path, polygons: list[Polygon], model: dict, set_by: str) -> None:
    """Store atomically (temp file + rename), bound to ``model``; raises OSError when storage.dir cannot take it."""
    write_json_atomic(mask_path(storage_dir), {"polygons": [[list(p) for p in poly] for poly in polygons],
                                               "model": model, "set_by": set_by, "ts": utc_now()})


def clear_mask(storage_dir: Path) -> bool:
    """Remove the stored mask; True if there was one."""
    return remove_stored(mask_path(storage_dir))


@dataclass(frozen=True)
class DroppedMask:
    """A stored mask not applied because it is not the running model's."""

    path: Path
    polygons: int
    model: dict  # what the record names: {"name", "sha256"}
    running: dict  # the running model's {"name", "sha256"}

    def message(self) -> str:
        was = (f"was drawn for model {self.model['name'] or '?'} (sha256 {self.model['sha256']})"
               if self.model["sha256"] else "names no model sha256, so whose frames it was drawn on cannot be told")
        return (f"{self.path}: stored mask of {self.polygons} polygon(s) {was}; dropped for model "
                f"{self.running['name']} (sha256 {self.running['sha256']}), which runs without it")

    def payload(self) -> dict:
        return {"polygons": self.polygons, "model": self.model, "running_model": self.running, "ts": utc_now()}

    def set_aside(self) -> Path | None:
        """Rename the file aside (kept for a person); None when it cannot be (it is then dropped again next time)."""
        from edge.threshold_audit import record_change

        record_change(self.path.parent, "station", "mask dropped", self.polygons, 0,
                      "drawn for another model: not applied", self.running["sha256"])
        return rename_aside(self.path)


def apply_stored_mask(inspector, storage_dir: Path) -> DroppedMask | None:
    """Add the stored polygons to the inspector's (config and bundle ones kept), for the model the file names only;
    another model's mask is returned, not applied. StoredMaskError when the file cannot be used."""
    record = load_mask(storage_dir)
    if record is None:
        return None
    running = model_ref(inspector.bundle)
    if stored_model(record)["sha256"] != running["sha256"]:
        return DroppedMask(mask_path(storage_dir), len(record["polygons"]), stored_model(record), running)
    inspector.set_stored_polygons(record["polygons"])
    logger.info("stored mask of %d polygon(s) (%s, %s) is in force, added to the configured ones",
                len(record["polygons"]), record.get("set_by", "?"), record.get("ts", "?"))
    return None
