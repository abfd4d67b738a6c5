"""Every change of the stored threshold (storage.dir/threshold.json), in the history database
(storage.dir/history.sqlite3, table threshold_audit): who, when, from, to, why.

Who is where the change came from: the station page ("page <address>", "(logged in)" with the page password),
"mqtt", "cli", "opcua", or "station" when a start or reload drops another model's stored threshold. A row is
appended by whatever changed the file (edge.control, `lineguard threshold --reset` without a daemon,
edge.threshold_store's drop); a failure to append is logged and never stops the change. The rows are few and
small, so they are kept whatever history.enabled, history.retention_days and history.max_mb say.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from edge.publish.history import FILE_NAME
from edge.publish.messages import utc_now

logger = logging.getLogger("lineguard")

WHY_MAX_CHARS = 200
AUDIT_LIMIT = 200  # rows the page shows
SCHEMA = """
CREATE TABLE IF NOT EXISTS threshold_audit (
    id INTEGER PRIMARY KEY, t REAL NOT NULL, ts TEXT NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    from_threshold REAL, to_threshold REAL, why TEXT, model_sha TEXT);
"""


def _open(storage_dir: Path) -> sqlite3.Connection:
    Path(storage_dir).mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(Path(storage_dir) / FILE_NAME, timeout=5.0, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def record_change(storage_dir: Path, who: str, action: str, old: float | None, new: float | None,
                  why: str | None = None, model_sha: str | None = None) -> bool:
    """Append one change (action "set", "reset" or "dropped"); False (logged) when the database cannot take it."""
    row = (time.time(), utc_now(), who[:100], action, old, new, (why or "")[:WHY_MAX_CHARS] or None, model_sha)
    try:
        db = _open(storage_dir)
        try:
            db.execute("INSERT INTO threshold_audit (t, ts, who, action, from_threshold, to_threshold, why, model_sha)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        finally:
            db.close()
        return True
    except (sqlite3.Error, OSError) as exc:
        logger.warning("threshold change not written to the audit in %s: %s", Path(storage_dir) / FILE_NAME, exc)
        return False


def read_changes(storage_dir: Path, limit: int = AUDIT_LIMIT) -> list[dict]:
    """The latest changes, newest first; [] when none was recorded. sqlite3.Error when the file cannot be read."""
    path = Path(storage_dir) / FILE_NAME
    if not path.is_file():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        db.row_factory = sqlite3.Row
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'threshold_audit'").fetchone() is None:
            return []
        rows = db.execute("SELECT ts, who, action, from_threshold, to_threshold, why, model_sha FROM threshold_audit"
                          " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    finally:
        db.close()
    return [{"ts": r["ts"], "who": r["who"], "action": r["action"], "from": r["from_threshold"],
             "to": r["to_threshold"], "why": r["why"], "model_sha": r["model_sha"]} for r in rows]
