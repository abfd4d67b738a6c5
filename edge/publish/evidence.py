"""Evidence images of inspected parts under storage.dir, within a size quota, oldest removed first.

A full or read-only disk stops evidence, never verdicts: errors are counted and reported.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from edge.core.files import write_bytes_atomic

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
RETRY_AFTER_ERROR_S = 60.0


class EvidenceStore:
    """Writes <seq>-<name>.jpg and <seq>-<name>-heat.jpg; deletes the oldest files past the quota."""

    def __init__(self, folder: Path, quota_bytes: int) -> None:
        self.folder = folder
        self.quota_bytes = quota_bytes
        self.errors = 0
        self.saved = 0
        self.last_error: str | None = None
        self._files: deque[tuple[Path, int]] = deque()
        self._total = 0
        self._disabled_until = 0.0
        self._scan()

    def _scan(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            stats = [(path, path.stat()) for path in self.folder.glob("*.jpg")]
        except OSError as exc:
            self._fail(exc)
            return
        for path, stat in sorted(stats, key=lambda item: item[1].st_mtime):
            self._files.append((path, stat.st_size))
            self._total += stat.st_size

    def _fail(self, exc: OSError) -> None:
        self.errors += 1
        if self.last_error is None:
            logger.warning("evidence not saved, storage problem: %s (verdicts continue)", exc)
        self.last_error = f"{exc.strerror or exc}: {exc.filename or self.folder}"
        self._disabled_until = time.monotonic() + RETRY_AFTER_ERROR_S

    def save(self, stem: str, images: dict[str, np.ndarray]) -> None:
        """Save each image as <stem><suffix>.jpg; suffix "" for the frame, "-heat" for the overlay. Never raises."""
        if time.monotonic() < self._disabled_until:
            self.errors += 1
            return
        try:
            for suffix, image in images.items():
                self._write(self.folder / f"{stem}{suffix}.jpg", image)
            self.saved += 1
            if self.last_error is not None:
                logger.info("evidence saving works again")
                self.last_error = None
        except OSError as exc:
            self._fail(exc)
        self._enforce_quota()

    def _write(self, path: Path, image: np.ndarray) -> None:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError(f"could not encode {path.name}")
        write_bytes_atomic(path, encoded.tobytes(), make_parents=False)  # a vanished folder is an error to report
        self._files.append((path, len(encoded)))
        self._total += len(encoded)

    def _enforce_quota(self) -> None:
        while self._total > self.quota_bytes and self._files:
            path, size = self._files.popleft()
            self._total -= size
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # e.g. the folder was replaced or remounted read-only
                self._fail(exc)
                return

    def stats(self) -> dict:
        return {"saved": self.saved, "errors": self.errors, "bytes": self._total, "last_error": self.last_error}
