"""Verdict history: every verdict in storage.dir/history.sqlite3 (WAL), for the page's Review tab and
`lineguard history` (edge.publish.history_read reads it).

The sink is inline and only queues a reference to the verdict's message; a thread of its own writes the queue in
batches, so inspection never waits for the database. History is bounded by history.retention_days and
history.max_mb (oldest removed first) and never takes the outbox's space: below storage.reserve_mb its writes
wait. A full disk or a damaged file makes it "unavailable" (in stats, one WARNING), and inspection goes on.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.core.space import reserve_problem
from edge.publish.sinks import VerdictEvent, VerdictSink

logger = logging.getLogger(__name__)

FILE_NAME = "history.sqlite3"
FLUSH_S = 0.5  # longest a verdict waits in memory before it is written
BATCH_ROWS = 256  # a batch this big is written at once
MAX_PENDING = 5000  # verdicts kept in memory while the file cannot be written; past it the oldest are lost
RETRY_S = 10.0  # after a failure, how long until the file is opened again
PRUNE_EVERY_S = 30.0
ROW_BYTES = 1024  # a row's size as the reserve check counts it (a message is usually smaller)
WAL_LIMIT_BYTES = 4 * 1024 * 1024

COLUMNS = ("seq", "t", "ts", "part_id", "image", "score", "threshold", "verdict", "reason", "regions",
           "model_sha", "evidence", "feedback", "message")
SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, t REAL NOT NULL, ts TEXT NOT NULL, part_id TEXT, image TEXT,
    score REAL, threshold REAL, verdict TEXT NOT NULL, reason TEXT, regions TEXT NOT NULL, model_sha TEXT,
    evidence TEXT, feedback TEXT, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS verdicts_t ON verdicts(t);
CREATE INDEX IF NOT EXISTS verdicts_seq ON verdicts(seq);
"""


def epoch_of(ts: str) -> float:
    """Seconds since the epoch of an ISO 8601 time with a zone (the messages' `ts`)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def row_of(message: dict[str, Any], evidence: str | None = None) -> tuple:
    """A verdicts row (COLUMNS order) of a result message (edge.publish.messages.result_payload)."""
    return (message["seq"], epoch_of(message["ts"]), message["ts"], message.get("part_id"), message.get("image"),
            message.get("score"), message.get("threshold"), message["verdict"], message.get("reason"),
            json.dumps(message.get("regions") or []), (message.get("model") or {}).get("sha256"), evidence, None,
            json.dumps(message, separators=(",", ":")))


class History:
    """The history file, written from one thread. Every failure is caught here and reported in ``stats()``."""

    def __init__(self, folder: Path, retention_s: float, max_bytes: int, reserve_bytes: int = 0) -> None:
        self.path = Path(folder) / FILE_NAME
        self.retention_s, self.max_bytes, self.reserve_bytes = retention_s, max_bytes, reserve_bytes
        self.available, self.reason = False, "not opened yet"
        self.written = self.removed = 0
        self._db: sqlite3.Connection | None = None
        self._warned = False
        self._retry_at = 0.0
        self._pruned_at = -PRUNE_EVERY_S

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def write(self, rows: list[tuple], feedback: list[tuple[int, str]] = (), now: float | None = None) -> bool:
        """Write rows (COLUMNS order) and feedback notes (seq, file); False when history is unavailable now."""
        if self._db is None:
            if time.monotonic() < self._retry_at:
                return False
            try:
                self._db = self._open()
            except (sqlite3.Error, OSError) as exc:
                return self._down(f"cannot open {self.path.name}: {exc}")
        problem = reserve_problem(self.path.parent, len(rows) * ROW_BYTES, self.reserve_bytes) if rows else None
        if problem is not None:
            return self._down(problem, close=False)
        try:
            with self._transaction():
                self._db.executemany(f"INSERT INTO verdicts ({', '.join(COLUMNS)}) "
                                     f"VALUES ({', '.join('?' * len(COLUMNS))})", rows)
                self._db.executemany("UPDATE verdicts SET feedback = ? WHERE id = "
                                     "(SELECT max(id) FROM verdicts WHERE seq = ?)",
                                     [(path, seq) for seq, path in feedback])
            self.written += len(rows)
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                self.prune(now)
        except (sqlite3.Error, OSError) as exc:
            return self._down(f"cannot write {self.path.name}: {exc}")
        if not self.available:
            if self._warned:
                logger.info("history available again (%s)", self.path)
            self.available, self.reason, self._warned = True, None, False
        return True

    def prune(self, now: float | None = None) -> int:
        """Remove verdicts older than the retention, then the oldest until the rows fit max_bytes."""
        self._pruned_at = time.monotonic()
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._transaction():
            removed = self._db.execute("DELETE FROM verdicts WHERE t < ?", (cutoff,)).rowcount
        for _ in range(20):  # each round removes the share of rows that is over, and a little more
            used = self.used_bytes()
            if used <= self.max_bytes:
                break
            count = self._db.execute("SELECT count(*) FROM verdicts").fetchone()[0]
            if count == 0:
                break
            excess = int(count * (used - self.max_bytes) / used) + max(1, count // 50)
            with self._transaction():
                removed += self._db.execute("DELETE FROM verdicts WHERE id IN (SELECT id FROM verdicts ORDER BY id "
                                            "LIMIT ?)", (excess,)).rowcount
        self.removed += removed
        return removed

    def used_bytes(self) -> int:
        """Bytes of the file its rows use (free pages, reused by later rows, are not counted)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._db.execute("PRAGMA page_size").fetchone()[0]

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, exc, tb):
                if kind is None:
                    db.execute("COMMIT")
                elif db.in_transaction:
                    db.execute("ROLLBACK")
                return False
        return _Tx()

    def _down(self, reason: str, close: bool = True) -> bool:
        self.available, self.reason = False, reason
        if not self._warned:
            logger.warning("history unavailable: %s (inspection goes on)", reason)
            self._warned = True
        if close:
            self.close()
            self._retry_at = time.monotonic() + RETRY_S
        return False

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


def _take(queued: deque) -> list:
    """What is in the deque now, oldest first (the frame loop may append, or drop its oldest, meanwhile)."""
    taken = []
    for _ in range(len(queued)):
        try:
            taken.append(queued.popleft())
        except IndexError:
            break
    return taken


class HistorySink(VerdictSink):
    """Inline: queues each verdict's message (a reference) for its writer thread, which writes them in batches."""

    name = "history"
    inline = True

    def __init__(self, history: History, evidence_name: Callable[[VerdictEvent], str | None]) -> None:
        self.history = history
        self.evidence_name = evidence_name  # the evidence file a verdict gets, None when evidence skips it
        self.dropped = 0
        self._pending: deque[tuple[dict, str | None]] = deque()
        self._feedback: deque[tuple[int, str]] = deque(maxlen=MAX_PENDING)
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def on_verdict(self, event: VerdictEvent) -> None:
        self._pending.append((event.message, self.evidence_name(event)))
        if len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        if len(self._pending) >= BATCH_ROWS:
            self._wake.set()

    def note_feedback(self, seq: int, path: str) -> None:
        """A verdict's frame was filed as feedback (any thread)."""
        self._feedback.append((seq, path))
        self._wake.set()

    def _run(self) -> None:
        self.history.write([])  # opens the file: stats tell at once whether history is available
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            stopping = self._stopping
            self.flush()
            if stopping:
                break
        self.history.close()

    def flush(self) -> None:
        """Write what is queued (the writer thread's)."""
        taken, notes = _take(self._pending), _take(self._feedback)
        if not taken and not notes:
            return
        try:
            rows = [row_of(message, evidence) for message, evidence in taken]
        except (KeyError, TypeError, ValueError):
            logger.exception("history: a verdict could not be stored")
            rows = []
        if not self.history.write(rows, notes):
            self._pending.extendleft(reversed(taken))  # kept for the next try, within MAX_PENDING
            self._feedback.extendleft(reversed(notes))
            while len(self._pending) > MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(10.0)

    def stats(self) -> dict[str, Any]:
        h = self.history
        return {"available": h.available, "reason": h.reason, "written": h.written, "pending": len(self._pending),
                "dropped": self.dropped, "removed": h.removed, "file": h.path.name}
