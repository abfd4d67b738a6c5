"""Evidence images of inspected parts under storage.dir, within a size quota, oldest removed first.

A full or read-only disk stops evidence, never verdicts: errors are counted and reported. Evidence never
takes the outbox's free space: below the shared reserve (storage.reserve_mb, edge.core.space) on its file
system it pauses, so the outbox keeps room for verdicts, and resumes once space is back.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from edge.core.files import write_bytes_atomic
from edge.core.space import reserve_problem

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
RETRY_AFTER_ERROR_S = 60.0


class EvidenceStore:
    """Writes <seq>-<name>.jpg and <seq>-<name>-heat.jpg; deletes the oldest files past the quota."""

    def __init__(self, folder: Path, quota_bytes: int, reserve_bytes: int = 0) -> None:
        self.folder = folder
        self.quota_bytes = quota_bytes
        self.reserve_bytes = reserve_bytes
        self.errors = 0
        self.saved = 0
        self.skipped_low_space = 0  # saves left out because free space was below the reserve
        self.low_space = False
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
            encoded = {suffix: _encode(stem + suffix, image) for suffix, image in images.items()}
            if not self._room_for(sum(map(len, encoded.values()))):
                return
            for suffix, data in encoded.items():
                self._write(self.folder / f"{stem}{suffix}.jpg", data)
            self.saved += 1
            if self.last_error is not None:
                logger.info("evidence saving works again")
                self.last_error = None
        except OSError as exc:
            self._fail(exc)
        self._enforce_quota()

    def _room_for(self, size: int) -> bool:
        """Whether saving ``size`` bytes leaves the reserve free; logs when that changes."""
        problem = reserve_problem(self.folder, size, self.reserve_bytes)
        low = problem is not None
        if low != self.low_space:
            self.low_space = low
            if low:
                logger.warning("evidence paused: %s; verdicts continue", problem)
            else:
                logger.info("evidence saving resumed: free space is above storage.reserve_mb again")
        self.skipped_low_space += low
        return not low

    def _write(self, path: Path, data: bytes) -> None:
        write_bytes_atomic(path, data, make_parents=False)  # a vanished folder is an error to report
        self._files.append((path, len(data)))
        self._total += len(data)

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
        return {"saved": self.saved, "errors": self.errors, "bytes": self._total, "last_error": self.last_error,
                "low_space": self.low_space, "skipped_low_space": self.skipped_low_space}


def _encode(name: str, image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {name}.jpg")
    return encoded.tobytes()

