"""The mask commands (`cmd/mask`, `cmd/mask_reset`, the station page's Apply and "Remove stored mask"), applied
by the main loop between two frames (edge.control), and the page's preview of a mask on the frames it holds.

Each stored change is a row of the audit (edge.threshold_audit) with action "mask set" or "mask reset", and
from/to as the number of stored polygons before and after.
"""
from __future__ import annotations

import logging
import threading

from edge.core.inspector import Inspector
from edge.mask_store import check_polygons, clear_mask, mask_path, save_mask
from edge.publish.messages import model_ref
from edge.text import one_line
from edge.threshold_audit import record_change

logger = logging.getLogger("lineguard")

PREVIEW_FRAMES = 24  # most held frames one preview scores


def apply_mask(inspector: Inspector, args, report, storage_dir, origin: str = "mqtt") -> None:
    """Store the polygons (bound to the running model) and apply them from the next frame; refuse with a reason
    when they do not fit the frames inspected or cannot be stored."""
    try:
        polygons = check_polygons([[list(p) for p in poly] for poly in args.polygons], inspector.frame_size)
        save_mask(storage_dir, polygons, model_ref(inspector.bundle), origin)
    except ValueError as exc:
        return _refuse(report, "mask", one_line(str(exc)), args.request_id)
    except OSError as exc:
        return _refuse(report, "mask", f"cannot store the mask in {mask_path(storage_dir)}: {one_line(str(exc))}",
                       args.request_id)
    old = len(inspector.stored_polygons)
    inspector.set_stored_polygons(polygons)
    record_change(storage_dir, origin, "mask set", old, len(polygons), args.why, model_ref(inspector.bundle)["sha256"])
    logger.info("mask set by %s: %d -> %d stored polygon(s)", origin, old, len(polygons))
    report.state()
    report.reply("mask", True, f"stored mask: {old} -> {len(polygons)} polygon(s), from the next frame",
                 args.request_id)


def reset_mask(inspector: Inspector, args, report, storage_dir, origin: str = "mqtt") -> None:
    """Remove the stored mask: the config's (and bundle's) ignore polygons only, from the next frame."""
    try:
        had_one = clear_mask(storage_dir)
    except OSError as exc:
        return _refuse(report, "mask_reset", f"cannot remove {mask_path(storage_dir)}: {one_line(str(exc))}",
                       args.request_id)
    old = len(inspector.stored_polygons)
    inspector.set_stored_polygons([])
    if had_one:
        record_change(storage_dir, origin, "mask reset", old, 0, args.why, model_ref(inspector.bundle)["sha256"])
    logger.info("stored mask removed by %s (%d polygon(s))%s", origin, old, "" if had_one else "; none was stored")
    report.state()
    report.reply("mask_reset", True, f"stored mask removed ({old} polygon(s))" if had_one else "no mask was stored",
                 args.request_id)


def _refuse(report, name: str, reason: str, request_id) -> None:
    logger.warning("command %r refused: %s", name, reason)
    report.reply(name, False, reason, request_id)


class MaskPreview:
    """Scores held frames with proposed polygons on a copy of the running inspector (its own model session, so
    the frame loop is never disturbed); one preview at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copy: tuple[Inspector, Inspector] | None = None  # (running, its copy)

    def _copy_of(self, running: Inspector) -> Inspector:
        if self._copy is None or self._copy[0] is not running:
            copy = Inspector(running.bundle, roi=running.frame_roi, threshold=running.threshold,
                             min_region_px=running.min_region_px, quality_gate=running.quality is not None)
            copy.ignore_masks = list(running.ignore_masks)
            self._copy = (running, copy)
        return self._copy[1]

    def preview(self, running: Inspector, frames: list, polygons) -> list[dict]:
        """Old (as recorded) and new score and verdict of each held frame; ValueError for bad polygons."""
        size = frames[0].image.shape[:2] if frames else None
        checked = check_polygons(polygons, size)
        with self._lock:
            copy = self._copy_of(running)
            copy.base_polygons = list(running.base_polygons)
            copy.set_threshold(running.threshold)
            copy.set_stored_polygons(checked)
            rows = []
            for held in frames[-PREVIEW_FRAMES:]:
                result = copy.inspect(held.image, bgr=held.image.ndim == 3)
                rows.append({"seq": held.seq, "image": held.name, "old_score": held.score,
                             "old_verdict": held.verdict, "score": result.score, "verdict": result.verdict,
                             "threshold": copy.threshold})
        return rows
