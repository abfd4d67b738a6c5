"""Durable SQLite outbox: verdict messages are stored before they are published.

Every ``result`` and ``alert`` message is written here first and removed only
once the broker has acknowledged it, so neither a broker outage nor a daemon
restart loses a verdict. Rows are delivered in insertion order, which is also
verdict sequence order.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WHEN_FULL_POLICIES = ("drop_oldest", "reject_new")
SYNC_PRAGMAS = {"normal": "NORMAL", "full": "FULL"}
BUSY_TIMEOUT_MS = 5_000
DROP_WARNING_INTERVAL_S = 30.0
VALID_QOS = (0, 1, 2)

_SCHEMA_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # AUTOINCREMENT: ids are never reused, even once every row has been acked,
    # so a reader's cursor (pending(after_id=...)) can never skip new rows.
    "CREATE TABLE IF NOT EXISTS messages ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " seq INTEGER NOT NULL,"
    " topic TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0), ('dropped', 0)",
)
_INSERT_SQL = "INSERT INTO messages (seq, topic, payload, qos) VALUES (?, ?, ?, ?)"
_DELETE_SQL = "DELETE FROM messages WHERE id = ?"
_DROP_OLDEST_SQL = "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)"
_PENDING_SQL = "SELECT id, seq, topic, payload, qos FROM messages WHERE id > ? ORDER BY id LIMIT ?"
_SET_META_SQL = "UPDATE meta SET value = ? WHERE key = ?"


class OutboxError(Exception):
    """The outbox database cannot be opened or used."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message, as returned by :meth:`Outbox.pending`."""

    id: int
    seq: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    """Bounded, durable FIFO of MQTT messages waiting for a broker acknowledgement.

    One SQLite database in WAL mode. ``sync="normal"`` survives a process crash;
    ``sync="full"`` also survives a power cut at the cost of an fsync per commit.
    When ``max_messages`` would be exceeded, ``when_full`` decides:
    ``"drop_oldest"`` deletes the oldest rows to make room, ``"reject_new"``
    refuses the whole new verdict. Either way the loss is counted in
    :attr:`dropped` (persisted) and logged.

    Thread-safe: the main loop may call :meth:`next_seq` and :meth:`put` while
    a sender thread calls :meth:`pending` and :meth:`ack`.
    """

    def __init__(
        self,
        path: Path,
        max_messages: int = 100_000,
        when_full: str = "drop_oldest",
        sync: str = "normal",
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        if when_full not in WHEN_FULL_POLICIES:
            raise ValueError(f"when_full must be one of {WHEN_FULL_POLICIES}, got {when_full!r}")
        if sync not in SYNC_PRAGMAS:
            raise ValueError(f"sync must be one of {tuple(SYNC_PRAGMAS)}, got {sync!r}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.when_full = when_full
        self._lock = threading.Lock()
        self._conn = self._open(SYNC_PRAGMAS[sync])
        self._last_seq, self._dropped, self._depth = self._load_counters()
        # Highest seq written to meta. put() leaves meta alone while the rows themselves carry their seq;
        # whatever deletes rows first records the highest seq so far, so a reopen never reuses one.
        self._stored_seq = self._last_seq
        self._drops_since_warning = 0
        self._last_drop_warning_at = -math.inf
        logger.info(
            "outbox %s opened: %d pending, last seq %d, %d dropped so far",
            self.path, self._depth, self._last_seq, self._dropped,
        )

    # -- public API -----------------------------------------------------------

    def next_seq(self) -> int:
        """Reserve and durably record the next verdict sequence number (never repeats)."""
        with self._lock:
            seq = self._last_seq + 1
            try:
                with self._conn:
                    self._conn.execute(_SET_META_SQL, (seq, "seq"))
            except sqlite3.Error as exc:
                raise self._failure("next_seq", exc) from exc
            self._last_seq = self._stored_seq = seq
            return seq

    def put(self, seq: int, messages: list[tuple[str, bytes, int]]) -> None:
        """Store the (topic, payload, qos) messages of one verdict in one transaction."""
        rows = [(seq, topic, payload, qos) for topic, payload, qos in messages]
        if not rows:
            return
        for _, topic, _, qos in rows:
            if qos not in VALID_QOS:
                raise ValueError(f"invalid qos {qos!r} for outbox message on {topic!r}")
        with self._lock:
            if self.when_full == "reject_new" and self._depth + len(rows) > self.max_messages:
                self._reject(len(rows))
                return
            excess = max(0, self._depth + len(rows) - self.max_messages)
            last_seq = max(self._last_seq, seq)
            try:
                with self._conn:
                    self._conn.executemany(_INSERT_SQL, rows)
                    if excess:
                        self._conn.execute(_DROP_OLDEST_SQL, (excess,))
                        self._conn.execute(_SET_META_SQL, (self._dropped + excess, "dropped"))
                        self._store_seq(last_seq)
            except sqlite3.Error as exc:
                raise self._failure("put", exc) from exc
            self._depth += len(rows) - excess
            self._last_seq = last_seq
            if excess:
                self._stored_seq = last_seq
            if excess:
                self._dropped += excess
                self._warn_dropped(excess, "oldest messages dropped")

    def pending(self, after_id: int = 0, limit: int = 500) -> list[OutboxMessage]:
        """Return up to ``limit`` stored messages with id > ``after_id``, oldest first."""
        with self._lock:
            try:
                rows = self._conn.execute(_PENDING_SQL, (after_id, limit)).fetchall()
            except sqlite3.Error as exc:
                raise self._failure("pending", exc) from exc
        return [OutboxMessage(*row) for row in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages in one transaction; return how many rows were removed."""
        params = [(message_id,) for message_id in ids]
        if not params:
            return 0
        with self._lock:
            try:
                with self._conn:
                    self._store_seq(self._last_seq)
                    removed = self._conn.executemany(_DELETE_SQL, params).rowcount
            except sqlite3.Error as exc:
                raise self._failure("ack", exc) from exc
            self._depth -= removed
            self._stored_seq = self._last_seq
            return removed

    def depth(self) -> int:
        """Number of messages waiting for an acknowledgement."""
        with self._lock:
            return self._depth

    @property
    def dropped(self) -> int:
        """Messages dropped or refused because the outbox was full, over the file's lifetime."""
        with self._lock:
            return self._dropped

    def close(self) -> None:
        """Close the database; later calls that need it raise OutboxError."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening --------------------------------------------------------------

    def _open(self, sync_pragma: str) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Default isolation: DML opens a transaction implicitly, `with conn:` commits it.
            conn = sqlite3.connect(self.path, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"{self.path}: cannot open outbox database: {exc}") from exc
        try:
            self._configure(conn, sync_pragma)
            self._check_integrity(conn)
            self._ensure_schema(conn)
        except (sqlite3.Error, _UnusableDatabase) as exc:
            conn.close()
            raise OutboxError(f"{self.path}: not a usable outbox database: {exc}") from exc
        return conn

    def _configure(self, conn: sqlite3.Connection, sync_pragma: str) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal_mode).lower() != "wal":
            logger.warning("%s: WAL not available, journal mode is %s", self.path, journal_mode)
        conn.execute(f"PRAGMA synchronous = {sync_pragma}")

    @staticmethod
    def _check_integrity(conn: sqlite3.Connection) -> None:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise _UnusableDatabase("integrity check failed: " + "; ".join(map(str, problems)))

    @staticmethod
    def _ensure_schema(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _UnusableDatabase(f"schema version {version} is newer than supported {SCHEMA_VERSION}")
        with conn:
            for statement in _SCHEMA_STATEMENTS:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Fails with "no such column" when the file belongs to something else.
        conn.execute("SELECT id, seq, topic, payload, qos FROM messages LIMIT 0").fetchall()
        conn.execute("SELECT key, value FROM meta LIMIT 0").fetchall()

    def _load_counters(self) -> tuple[int, int, int]:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            max_stored_seq, depth = self._conn.execute(
                "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM messages"
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._failure("open", exc) from exc
        last_seq = max(int(meta.get("seq", 0)), int(max_stored_seq))
        return last_seq, int(meta.get("dropped", 0)), int(depth)

    # -- helpers (called with self._lock held) -------------------------------

    def _store_seq(self, seq: int) -> None:
        """Record seq in meta (inside the caller's transaction) before rows that may carry it are deleted."""
        if seq != self._stored_seq:
            self._conn.execute(_SET_META_SQL, (seq, "seq"))

    def _failure(self, action: str, exc: sqlite3.Error) -> OutboxError:
        return OutboxError(f"{self.path}: outbox {action} failed: {exc}")

    def _reject(self, count: int) -> None:
        try:
            with self._conn:
                self._conn.execute(_SET_META_SQL, (self._dropped + count, "dropped"))
        except sqlite3.Error as exc:
            raise self._failure("put", exc) from exc
        self._dropped += count
        self._warn_dropped(count, "new messages rejected")

    def _warn_dropped(self, count: int, what: str) -> None:
        self._drops_since_warning += count
        now = time.monotonic()
        if now - self._last_drop_warning_at < DROP_WARNING_INTERVAL_S:
            return
        logger.warning(
            "outbox full (%d messages, policy %s): %d %s since last report, %d in total",
            self.max_messages, self.when_full, self._drops_since_warning, what, self._dropped,
        )
        self._drops_since_warning = 0
        self._last_drop_warning_at = now


class _UnusableDatabase(Exception):
    """Internal: the file is SQLite but not an outbox this code can use."""
