"""Durable SQLite outbox: verdict messages are stored before they are published.

Every ``result`` and ``alert`` message is written here first and removed only
once the broker has acknowledged it, so neither a broker outage nor a daemon
restart loses a verdict. Rows are delivered in insertion order, which is also
verdict sequence order. A verdict's seq is recorded only with the verdict itself (or, once its rows
are deleted, as the highest seq so far), so no seq is spent on anything but a verdict.

A file that is not a usable outbox (damaged, another program's, a newer version's, or holding counters
no verdict could have produced) is moved aside, kept, and a fresh outbox started: see :func:`open_outbox`.
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge.core.files import check_regular

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WHEN_FULL_POLICIES = ("drop_oldest", "reject_new")
SYNC_PRAGMAS = {"normal": "NORMAL", "full": "FULL"}
BUSY_TIMEOUT_MS = 5_000
DROP_WARNING_INTERVAL_S = 30.0
VALID_QOS = (0, 1, 2)
MAX_SEQ = 2**53 - 1  # the largest integer every JSON reader (JavaScript too) holds exactly
SQLITE_SIDE_FILES = ("-wal", "-shm")
# SQLite's own verdicts on a file that is not a database or is damaged; I/O, space and permission
# errors are storage faults instead, and the file is left alone.
CORRUPT_ERRORS = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

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
_PENDING_SQL = ("SELECT id, seq, topic, payload, qos FROM messages WHERE id > ?"
                " AND (substr(topic, 1, length(?)) = ?) = ? ORDER BY id LIMIT ?")
# A row whose topic starts with HELD is not for the MQTT link: a topic name never holds '#', so it is held for
# another sender, named after the '#' (edge.publish.sparkplug: the edge node's DDATA).
HELD = "#"
_SET_META_SQL = "UPDATE meta SET value = ? WHERE key = ?"
_COUNTERS_SQL = (
    "SELECT (SELECT COUNT(*) FROM meta WHERE key IN ('seq', 'dropped')"
    "        AND (typeof(value) != 'integer' OR value < 0 OR value > ?)),"
    " (SELECT COUNT(*) FROM messages WHERE typeof(seq) != 'integer' OR seq < 1 OR seq > ?)"
)


class OutboxError(Exception):
    """The outbox database cannot be opened or used."""


class OutboxCorrupt(OutboxError):
    """The file is not a usable outbox: damaged, another program's or a newer version's, or its counters
    are out of range. Unlike a storage fault, waiting does not help."""


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

    Thread-safe: the main loop may call :meth:`put` while a sender thread calls
    :meth:`pending` and :meth:`ack`.
    """

    recovered_from: str | None = None  # where a damaged predecessor was moved aside (open_outbox)

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
        try:
            self._last_seq, self._stored_seq, self._dropped, self._depth = self._load_counters()
        except OutboxError:
            self._conn.close()
            raise
        # _stored_seq is the seq in meta. put() leaves meta alone while the rows themselves carry their seq;
        # whatever deletes rows first records the highest seq so far, so a reopen never reuses one.
        self._drops_since_warning = 0
        self._last_drop_warning_at = -math.inf
        logger.info(
            "outbox %s opened: %d pending, last seq %d, %d dropped so far",
            self.path, self._depth, self._last_seq, self._dropped,
        )

    # -- public API -----------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest seq stored so far (0 for a new outbox). Reserves nothing: :meth:`put` records a seq
        together with its verdict."""
        with self._lock:
            return self._last_seq

    def next_seq(self) -> int:
        """The seq the next verdict gets: :attr:`last_seq` + 1. Nothing is recorded until :meth:`put`."""
        return self.last_seq + 1

    def put(self, seq: int, messages: list[tuple[str, bytes, int]]) -> None:
        """Store the (topic, payload, qos) messages of one verdict, and so its seq, in one transaction."""
        if not 1 <= seq <= MAX_SEQ:
            raise ValueError(f"seq {seq} is outside 1..{MAX_SEQ}")
        rows = [(seq, topic, payload, qos) for topic, payload, qos in messages]
        if not rows:
            return
        for _, topic, _, qos in rows:
            if qos not in VALID_QOS:
                raise ValueError(f"invalid qos {qos!r} for outbox message on {topic!r}")
        with self._lock:
            if self.when_full == "reject_new" and self._depth + len(rows) > self.max_messages:
                self._reject(seq, len(rows))
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
                self._dropped += excess
                self._warn_dropped(excess, "oldest messages dropped")

    def pending(self, after_id: int = 0, limit: int = 500, prefix: str = "", matching: bool = True
                ) -> list[OutboxMessage]:
        """Up to ``limit`` stored messages with id > ``after_id``, oldest first; only those whose topic starts
        with ``prefix`` (all by default), or with ``matching=False`` only those whose topic does not."""
        with self._lock:
            try:
                rows = self._conn.execute(_PENDING_SQL, (after_id, prefix, prefix, matching, limit)).fetchall()
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
            check_regular(self.path)
            # Default isolation: DML opens a transaction implicitly, `with conn:` commits it.
            conn = sqlite3.connect(self.path, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise OutboxError(f"{self.path}: cannot open outbox database: {reason}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _check_contents(conn)  # before writing anything, WAL mode too: another program's file stays as it was
            self._configure(conn, sync_pragma)
            self._ensure_schema(conn)
        except (sqlite3.Error, _UnusableDatabase) as exc:
            conn.close()
            raise _classify(self.path, exc) from exc
        return conn

    def _configure(self, conn: sqlite3.Connection, sync_pragma: str) -> None:
        journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal_mode).lower() != "wal":
            logger.warning("%s: WAL not available, journal mode is %s", self.path, journal_mode)
        conn.execute(f"PRAGMA synchronous = {sync_pragma}")

    @staticmethod
    def _ensure_schema(conn: sqlite3.Connection) -> None:
        with conn:
            for statement in _SCHEMA_STATEMENTS:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _load_counters(self) -> tuple[int, int, int, int]:
        """Highest seq (in meta or on a row), the seq in meta, dropped, depth."""
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            max_stored_seq, depth = self._conn.execute(
                "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM messages"
            ).fetchone()
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc
        stored_seq = int(meta.get("seq", 0))
        return max(stored_seq, int(max_stored_seq)), stored_seq, int(meta.get("dropped", 0)), int(depth)

    # -- helpers (called with self._lock held) -------------------------------

    def _store_seq(self, seq: int) -> None:
        """Record seq in meta (inside the caller's transaction) before rows that may carry it are deleted."""
        if seq != self._stored_seq:
            self._conn.execute(_SET_META_SQL, (seq, "seq"))

    def _failure(self, action: str, exc: sqlite3.Error) -> OutboxError:
        return OutboxError(f"{self.path}: outbox {action} failed: {exc}")

    def _reject(self, seq: int, count: int) -> None:
        """Refuse a verdict, but keep its seq: it went to the other sinks (evidence files are named by it)."""
        last_seq = max(self._last_seq, seq)
        try:
            with self._conn:
                self._conn.execute(_SET_META_SQL, (self._dropped + count, "dropped"))
                self._store_seq(last_seq)
        except sqlite3.Error as exc:
            raise self._failure("put", exc) from exc
        self._last_seq = self._stored_seq = last_seq
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


def _classify(path: Path, exc: Exception) -> OutboxError:
    """Damage or a foreign file (OutboxCorrupt) versus a storage fault: I/O, space, permissions (OutboxError)."""
    if isinstance(exc, _UnusableDatabase) or getattr(exc, "sqlite_errorname", None) in CORRUPT_ERRORS:
        return OutboxCorrupt(f"{path}: not a usable outbox database: {exc}")
    return OutboxError(f"{path}: cannot use outbox database: {exc}")


def _check_contents(conn: sqlite3.Connection) -> None:
    """An outbox this code can use: intact, not newer, the outbox's columns, counters no verdict stream exceeds."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise _UnusableDatabase("integrity check failed: " + "; ".join(map(str, problems)))
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise _UnusableDatabase(f"schema version {version} is newer than supported {SCHEMA_VERSION}")
    expected = {"messages": ["id", "seq", "topic", "payload", "qos"], "meta": ["key", "value"]}
    found = {table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")] for table in expected}
    for table, columns in found.items():
        if columns and columns != expected[table]:
            raise _UnusableDatabase(f"table {table} has columns {columns}, not {expected[table]}")
    if all(found.values()):
        bad_meta, bad_rows = conn.execute(_COUNTERS_SQL, (MAX_SEQ, MAX_SEQ)).fetchone()
        if bad_meta or bad_rows:
            raise _UnusableDatabase(f"{bad_meta} counter(s) and {bad_rows} message seq(s) are not integers "
                                    f"within 0..{MAX_SEQ}")


def check_file(path: Path) -> None:
    """Check an existing outbox without changing it (check-config): OutboxCorrupt or OutboxError if unusable.

    Read-only; with no write-ahead log beside it (no process has it open) it is read as immutable, so
    not even SQLite's side files are created.
    """
    try:
        check_regular(path)  # a FIFO would hang SQLite's read, a device would pass as an empty database
    except OSError as exc:
        raise OutboxError(f"{path}: cannot open outbox database: {exc.strerror}") from None
    immutable = not any(Path(f"{path}{suffix}").exists() for suffix in SQLITE_SIDE_FILES)
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            _check_contents(conn)
        finally:
            conn.close()
    except (sqlite3.Error, _UnusableDatabase) as exc:
        raise _classify(path, exc) from exc


def move_aside(path: Path) -> Path:
    """Rename a damaged outbox (and its SQLite side files) to <name>.corrupt-<UTC time>; the new name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    count = 1
    while any(Path(f"{target}{suffix}").exists() for suffix in ("", *SQLITE_SIDE_FILES)):
        count += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{count}")
    for suffix in SQLITE_SIDE_FILES:  # side files first: a fresh outbox must never pick up an old log
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, f"{target}{suffix}")
    os.replace(path, target)
    return target


def open_outbox(path: Path, max_messages: int = 100_000, when_full: str = "drop_oldest",
                sync: str = "normal") -> Outbox:
    """Open the outbox; one that is damaged is moved aside (kept) and a fresh one started, logged as an error
    and named in :attr:`Outbox.recovered_from`. A storage fault (OSError, OutboxError) is raised as it is."""
    try:
        return Outbox(path, max_messages, when_full, sync)
    except OutboxCorrupt as exc:
        problem = str(exc)
    kept = move_aside(path)
    logger.error("%s; moved it aside to %s (kept, with its undelivered messages) and started a fresh outbox: "
                 "seq starts again after what the file held", problem, kept.name)
    outbox = Outbox(path, max_messages, when_full, sync)
    outbox.recovered_from = kept.name
    return outbox
