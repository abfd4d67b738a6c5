"""Feedback into training: a person says "good part (false reject)" or "defect (missed)" about a recent frame.

Evidence images are JPEG (lossy, 8 bits), which is not what a model should be retrained on. So the latest
frames are kept lossless in memory (RecentFrames, bounded by feedback.keep_frames_mb, oldest forgotten first),
and a labelled one is written as PNG into the feedback folder in the MVTec AD layout: train/good/ for a good
part, test/<defect>/ for a missed defect, each PNG with a JSON file beside it (seq, image, score, verdict,
threshold, model sha256, time, label). `lineguard train --data FEEDBACK_DIR` reads the folder as it is.
The folder is apart from evidence/, so the evidence quota never removes a labelled frame. Labels are a closed
vocabulary (edge.labels), and a seq keeps its first label: a contradicting one is refused, never filed twice.
The folder has a quota (feedback.quota_mb) and stops at the free-space reserve it shares with the outbox
(storage.reserve_mb): past either a label is refused with the reason and counted; nothing is removed.

Labels come from the station page, `lineguard feedback` and MQTT `cmd/feedback`; all go through the command
queue, and the files are written here on a thread of their own, so inspection never waits for a PNG encoder.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.core.files import write_bytes_atomic
from edge.core.space import folder_bytes, reserve_problem
from edge.labels import DEFAULT_DEFECT, class_of, label_folder
from edge.publish.messages import utc_now

logger = logging.getLogger("lineguard")

FEEDBACK_QUEUE_SIZE = 256  # labels waiting for their files; a dashboard may send a batch
PNG_COMPRESSION = 3  # 0..9: 3 is quick and already small; PNG is lossless whatever the level
DEFAULT_QUOTA_BYTES = 500_000_000  # feedback.quota_mb's default


@dataclass(frozen=True)
class HeldFrame:
    """A frame as captured, with what its verdict said about it."""

    seq: int
    image: np.ndarray
    name: str
    score: float
    verdict: str
    threshold: float
    model: dict
    ts: str


class FeedbackRefused(ValueError):
    """A label that is not filed; str() is the reason sent back."""


class NoRoom(FeedbackRefused):
    """Refused for the folder's quota or the outbox's free-space reserve."""


class RecentFrames:
    """The latest frames, lossless, within a byte budget. Thread-safe: a sink adds, feedback reads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[int, HeldFrame] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, frame: HeldFrame) -> None:
        if frame.image.nbytes > self.max_bytes:
            return
        with self._lock:
            self._frames[frame.seq] = frame
            self._bytes += frame.image.nbytes
            while self._bytes > self.max_bytes:
                _, oldest = self._frames.popitem(last=False)
                self._bytes -= oldest.image.nbytes

    def get(self, seq: int) -> HeldFrame | None:
        with self._lock:
            return self._frames.get(seq)

    def seqs(self) -> set[int]:
        with self._lock:
            return set(self._frames)

    def held(self) -> list[HeldFrame]:
        """The frames held, oldest first."""
        with self._lock:
            return list(self._frames.values())


class FeedbackStore:
    """Writes labelled frames into the feedback folder on its own thread; answers through ``reply``."""

    def __init__(self, folder: Path, frames: RecentFrames, quota_bytes: int = DEFAULT_QUOTA_BYTES,
                 reserve_bytes: int = 0) -> None:
        self.folder = Path(folder)
        self.frames = frames
        self.quota_bytes, self.reserve_bytes = quota_bytes, reserve_bytes
        self.saved = self.refused_quota = self.refused_low_space = 0
        self.last_refusal: str | None = None
        self._refusing = False  # refusing for room since the last warning
        self.on_filed = None  # called with (seq, PNG path within the folder) once a frame is filed (its thread)
        self._bytes = folder_bytes(self.folder)  # what earlier runs filed counts against the quota
        self._queue: queue.Queue = queue.Queue(maxsize=FEEDBACK_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        return {"saved": self.saved, "bytes": self._bytes, "refused_quota": self.refused_quota,
                "refused_low_space": self.refused_low_space, "last_refusal": self.last_refusal}

    def label(self, args, reply) -> None:
        """Queue one label (a validated FeedbackCommand); ``reply(command, ok, reason, request_id)`` answers."""
        try:
            self._queue.put_nowait((args, reply))
        except queue.Full:
            reply("feedback", False, "busy: too many labels waiting to be written", args.request_id)

    def close(self) -> None:
        self._queue.put((None, None))
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            args, reply = self._queue.get()
            if args is None:
                return
            try:
                ok, reason = True, self.write(args.seq, args.label, args.defect)
            except NoRoom as exc:  # warned once when refusing started (_check_room)
                ok, reason = False, str(exc)
            except (LookupError, FeedbackRefused) as exc:
                ok, reason = False, str(exc)
                logger.warning("feedback for seq %d refused: %s", args.seq, exc)
            except (OSError, ValueError) as exc:
                ok, reason = False, f"cannot write feedback: {exc}"
                logger.error("feedback for seq %d not saved: %s", args.seq, exc)
            if ok:
                logger.info("feedback: %s", reason)
            reply("feedback", ok, reason, args.request_id)

    def write(self, seq: int, label: str, defect: str = DEFAULT_DEFECT) -> str:
        """Save the held frame as PNG + JSON; the reply's reason (names the PNG within the feedback folder).
        FeedbackRefused for a label outside the vocabulary or one that contradicts the seq's earlier label."""
        try:
            folder = label_folder(label, defect)
        except ValueError as exc:
            raise FeedbackRefused(str(exc)) from None
        earlier = self.filed(seq)
        if earlier is not None:
            return self._same_label(seq, earlier, folder)
        held = self.frames.get(seq)
        if held is None:
            raise LookupError(f"seq {seq} is not among the frames kept lossless (the latest ones within "
                              "feedback.keep_frames_mb); label it sooner, or add the file with `lineguard feedback "
                              "--image`")
        relative = Path(folder) / f"{seq:09d}-{Path(held.name).stem}"
        ok, png = cv2.imencode(".png", held.image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if not ok:
            raise ValueError(f"seq {seq}: frame could not be encoded as PNG")
        meta = {"seq": held.seq, "image": held.name, "label": class_of(label, defect),
                "score": held.score, "verdict": held.verdict, "threshold": held.threshold,
                "model": held.model, "frame_ts": held.ts, "labelled_ts": utc_now()}
        files = {".png": png.tobytes(), ".json": (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode()}
        self._check_room(sum(map(len, files.values())))
        self._write_pair(self.folder / relative, files)
        self.saved += 1
        if self.on_filed is not None:
            self.on_filed(seq, relative.with_suffix(".png").as_posix())
        return f"seq {seq} saved as {relative.with_suffix('.png')}"

    def _write_pair(self, stem: Path, files: dict[str, bytes]) -> None:
        """The PNG, then its JSON, each atomically; a PNG whose JSON failed is removed, so no label is half there."""
        write_bytes_atomic(stem.with_suffix(".png"), files[".png"])
        try:
            write_bytes_atomic(stem.with_suffix(".json"), files[".json"])
        except OSError:
            stem.with_suffix(".png").unlink(missing_ok=True)
            raise
        self._bytes += sum(map(len, files.values()))
        if self._refusing:
            self._refusing = False
            logger.info("feedback labels fit again (%s)", self.folder)

    def _check_room(self, size: int) -> None:
        """NoRoom (counted) when ``size`` more bytes pass the quota or take the outbox's reserve."""
        quota = quota_problem(self.folder, self._bytes, size, self.quota_bytes)
        if quota is not None:  # a person may have moved frames away since: count again before refusing
            self._bytes = folder_bytes(self.folder)
            quota = quota_problem(self.folder, self._bytes, size, self.quota_bytes)
        low = None if quota else reserve_problem(self.folder, size, self.reserve_bytes)
        if quota is None and low is None:
            return
        if quota is not None:
            self.refused_quota += 1
        else:
            self.refused_low_space += 1
        self.last_refusal = f"label refused: {quota or low}"
        if not self._refusing:  # one warning when refusing starts, not one per label of a flood
            self._refusing = True
            logger.warning("feedback: %s (each refusal is answered and counted in stats.feedback)", self.last_refusal)
        raise NoRoom(self.last_refusal)

    def filed(self, seq: int) -> Path | None:
        """The PNG a seq was labelled with earlier (relative to the folder), if any."""
        found = sorted(self.folder.glob(f"*/*/{seq:09d}-*.png"))
        return found[0].relative_to(self.folder) if found else None

    @staticmethod
    def _same_label(seq: int, earlier: Path, folder) -> str:
        """A seq keeps its first label: the same one again is a no-op, another is refused (fail closed)."""
        if earlier.parent.as_posix() == str(folder):
            return f"seq {seq} already saved as {earlier.as_posix()}"
        raise FeedbackRefused(f"seq {seq} is already labelled {earlier.parent.name} ({earlier.as_posix()}); a seq "
                              "takes one label: to correct it, delete that file and its .json, then label again")


def quota_problem(folder: Path, used: int, size: int, quota_bytes: int) -> str | None:
    """Why ``size`` more bytes do not fit the feedback folder's quota; None when they do."""
    if used + size <= quota_bytes:
        return None
    return (f"feedback folder {folder} holds {used / 1e6:.1f} MB, and feedback.quota_mb is {quota_bytes / 1e6:g} MB; "
            "retrain, then move its frames away to make room")
