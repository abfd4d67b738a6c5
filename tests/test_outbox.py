"""Tests for the durable SQLite outbox."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.publish.outbox import (
    MAX_SEQ, Outbox, OutboxCorrupt, OutboxError, OutboxMessage, check_file, open_outbox,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_TOPIC = "lg/dev1/result"
ALERT_TOPIC = "lg/dev1/alert"
WRITER_RUN_S = 0.4


def verdict(seq: int) -> list[tuple[str, bytes, int]]:
    return [(RESULT_TOPIC, b"result-%d" % seq, 1), (ALERT_TOPIC, b"alert-%d" % seq, 1)]


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite3"


def test_seq_is_monotonic_across_reopen_even_when_everything_was_acked(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        seqs = []
        for _ in range(3):
            seqs.append(outbox.next_seq())
            outbox.put(seqs[-1], verdict(seqs[-1]))
        outbox.ack(m.id for m in outbox.pending())
        assert outbox.depth() == 0
    assert seqs == [1, 2, 3]

    with Outbox(outbox_path) as outbox:
        assert outbox.last_seq == 3 and outbox.next_seq() == 4


def test_opening_and_asking_reserves_no_seq(outbox_path: Path) -> None:
    """A start that inspects nothing must not spend a seq: the next verdict after it is exactly last + 1."""
    with Outbox(outbox_path) as outbox:
        outbox.put(outbox.next_seq(), verdict(1))
    for _ in range(3):
        with Outbox(outbox_path) as outbox:
            assert outbox.next_seq() == 2
            assert outbox.next_seq() == 2
    with Outbox(outbox_path) as outbox:
        outbox.put(outbox.next_seq(), verdict(2))
        assert [m.seq for m in outbox.pending()] == [1, 1, 2, 2]


def test_rows_left_by_a_killed_writer_keep_their_seq_once_a_later_start_delivers_them(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.put(1, verdict(1))
        outbox.ack(m.id for m in outbox.pending())
        for seq in (2, 3):
            outbox.put(seq, verdict(seq))  # in flight when the writer died
    with Outbox(outbox_path) as outbox:  # the next start inspects nothing, only delivers
        assert outbox.ack(m.id for m in outbox.pending()) == 4
    with Outbox(outbox_path) as outbox:
        assert outbox.depth() == 0 and outbox.next_seq() == 4


def test_put_with_a_higher_seq_moves_next_seq_past_it(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.put(41, verdict(41))
        assert outbox.next_seq() == 42
    with Outbox(outbox_path) as outbox:
        assert outbox.next_seq() == 42


def test_a_seq_outside_the_json_safe_range_is_refused(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        for seq in (0, -1, MAX_SEQ + 1, 2**63):
            with pytest.raises(ValueError, match="outside"):
                outbox.put(seq, verdict(1))
        assert outbox.depth() == 0 and outbox.last_seq == 0


def test_put_pending_ack_keep_insertion_order(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        for _ in range(5):
            seq = outbox.next_seq()
            outbox.put(seq, verdict(seq))
        assert outbox.depth() == 10

        everything = outbox.pending()
        assert [m.seq for m in everything] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert [m.topic for m in everything[:2]] == [RESULT_TOPIC, ALERT_TOPIC]
        assert everything[0] == OutboxMessage(everything[0].id, 1, RESULT_TOPIC, b"result-1", 1)
        assert [m.id for m in everything] == sorted(m.id for m in everything)

        first_page = outbox.pending(limit=3)
        assert first_page == everything[:3]
        assert outbox.pending(after_id=first_page[-1].id, limit=3) == everything[3:6]

        assert outbox.ack([m.id for m in first_page]) == 3
        assert outbox.ack([first_page[0].id]) == 0  # acking twice is harmless
        assert outbox.depth() == 7
        assert outbox.pending() == everything[3:]


def test_ids_are_never_reused_so_a_cursor_never_skips_new_rows(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.put(outbox.next_seq(), verdict(1))
        cursor = outbox.pending()[-1].id
        outbox.ack(m.id for m in outbox.pending())
    with Outbox(outbox_path) as outbox:
        outbox.put(outbox.next_seq(), verdict(2))
        assert [m.payload for m in outbox.pending(after_id=cursor)] == [b"result-2", b"alert-2"]


def test_pending_state_survives_reopen(outbox_path: Path) -> None:
    with Outbox(outbox_path, sync="full") as outbox:
        for _ in range(3):
            seq = outbox.next_seq()
            outbox.put(seq, verdict(seq))
        outbox.ack([outbox.pending()[0].id])
        before = outbox.pending()
    with Outbox(outbox_path) as outbox:
        assert outbox.pending() == before
        assert outbox.depth() == 5


def test_drop_oldest_makes_room_and_counts(outbox_path: Path) -> None:
    with Outbox(outbox_path, max_messages=4, when_full="drop_oldest") as outbox:
        for seq in range(1, 4):
            outbox.put(seq, verdict(seq))
        assert outbox.depth() == 4
        assert outbox.dropped == 2
        assert [m.seq for m in outbox.pending()] == [2, 2, 3, 3]
    with Outbox(outbox_path, max_messages=4) as outbox:
        assert outbox.dropped == 2


def test_reject_new_refuses_whole_verdicts_and_counts(outbox_path: Path) -> None:
    with Outbox(outbox_path, max_messages=5, when_full="reject_new") as outbox:
        for seq in range(1, 5):
            outbox.put(seq, verdict(seq))
        assert [m.seq for m in outbox.pending()] == [1, 1, 2, 2]
        assert outbox.dropped == 4
        outbox.ack([outbox.pending()[0].id])
        outbox.put(5, [(RESULT_TOPIC, b"r5", 1)])
        assert [m.seq for m in outbox.pending()] == [1, 2, 2, 5]
        outbox.put(6, verdict(6))  # refused, but its seq was a verdict's: never given again
    with Outbox(outbox_path, max_messages=5, when_full="reject_new") as outbox:
        assert outbox.dropped == 6
        assert outbox.next_seq() == 7


def test_full_outbox_warnings_are_rate_limited(outbox_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(outbox_path, max_messages=2) as outbox:
        with caplog.at_level("WARNING", logger="edge.publish.outbox"):
            for seq in range(1, 20):
                outbox.put(seq, verdict(seq))
        assert outbox.dropped == 36
    warnings = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"max_messages": 0}, {"when_full": "block"}, {"sync": "off"}],
)
def test_invalid_options_are_refused(outbox_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Outbox(outbox_path, **kwargs)


def test_invalid_qos_is_refused(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        with pytest.raises(ValueError, match="qos"):
            outbox.put(1, [(RESULT_TOPIC, b"x", 3)])
        assert outbox.depth() == 0


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, just some text\n" * 200, b"SQLite format 3\x00" + b"\xff" * 4096],
    ids=["text", "damaged-header"],
)
def test_corrupt_file_raises_a_clear_error(outbox_path: Path, content: bytes) -> None:
    outbox_path.parent.mkdir(parents=True)
    outbox_path.write_bytes(content)
    with pytest.raises(OutboxError, match="not a usable outbox database") as excinfo:
        Outbox(outbox_path)
    assert str(excinfo.value).startswith(f"{outbox_path}:")


def test_sqlite_file_of_something_else_raises(outbox_path: Path) -> None:
    # The one place outside edge/publish/outbox.py that needs sqlite3: crafting a foreign database.
    outbox_path.parent.mkdir(parents=True)
    with sqlite3.connect(outbox_path) as conn:
        conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
    conn.close()
    with pytest.raises(OutboxError, match="not a usable outbox database"):
        Outbox(outbox_path)


def test_closed_outbox_raises_outbox_error(outbox_path: Path) -> None:
    outbox = Outbox(outbox_path)
    outbox.close()
    with pytest.raises(OutboxError):
        outbox.put(1, verdict(1))


def test_concurrent_writer_and_sender_threads(outbox_path: Path) -> None:
    verdicts = 300
    with Outbox(outbox_path) as outbox:
        seen_seqs: list[int] = []
        writer_done = threading.Event()

        def write() -> None:
            for _ in range(verdicts):
                seq = outbox.next_seq()
                outbox.put(seq, verdict(seq))
            writer_done.set()

        writer = threading.Thread(target=write)
        writer.start()
        cursor = 0
        while not (writer_done.is_set() and outbox.depth() == 0):
            batch = outbox.pending(after_id=cursor, limit=7)
            if batch:
                cursor = batch[-1].id
                seen_seqs.extend(m.seq for m in batch)
                outbox.ack(m.id for m in batch)
        writer.join()
    assert seen_seqs == [seq for seq in range(1, verdicts + 1) for _ in range(2)]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=6)),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(ops=operations, max_messages=st.integers(min_value=1, max_value=8))
def test_behaves_like_a_bounded_fifo(ops: list[tuple[str, int]], max_messages: int) -> None:
    """Model check: pending() is the newest max_messages rows put, minus those acked."""
    with tempfile.TemporaryDirectory() as tmp, Outbox(Path(tmp) / "o.db", max_messages=max_messages) as outbox:
        model: list[tuple[int, bytes]] = []
        dropped = 0
        for op, count in ops:
            if op == "put":
                seq = outbox.next_seq()
                rows = [(RESULT_TOPIC, b"%d-%d" % (seq, i), 1) for i in range(count)]
                outbox.put(seq, rows)
                model.extend((seq, payload) for _, payload, _ in rows)
                excess = max(0, len(model) - max_messages)
                dropped += excess
                del model[:excess]
            else:
                stored = outbox.pending()
                acked = stored[:count]
                outbox.ack(m.id for m in acked)
                del model[: len(acked)]
            assert [(m.seq, m.payload) for m in outbox.pending()] == model
            assert outbox.depth() == len(model)
            assert outbox.dropped == dropped


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edge.publish.outbox import Outbox

    outbox = Outbox(Path(sys.argv[1]))
    while True:
        seq = outbox.next_seq()
        outbox.put(seq, [("lg/dev1/result", b"result-%d" % seq, 1), ("lg/dev1/alert", b"alert-%d" % seq, 1)])
        if seq % 100 == 0:
            print(seq, flush=True)
    """
)


def test_survives_sigkill_in_the_middle_of_writes(tmp_path: Path, outbox_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(outbox_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert writer.stdout is not None
        assert int(writer.stdout.readline()) == 100  # it is writing: now let it run, then kill it
        time.sleep(WRITER_RUN_S)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL

    with Outbox(outbox_path) as outbox:
        stored = outbox.pending(limit=10_000_000)
        last_seq = stored[-1].seq
        assert last_seq > 100
        # Every committed verdict is complete, and they form a gapless prefix 1..last_seq.
        assert [(m.seq, m.topic, m.payload) for m in stored] == [
            row for seq in range(1, last_seq + 1) for row in _expected_rows(seq)
        ]
        assert [m.id for m in stored] == sorted(m.id for m in stored)
        # Only a verdict's put records a seq: the next one follows the last committed verdict exactly.
        assert outbox.next_seq() == last_seq + 1


def _expected_rows(seq: int) -> list[tuple[int, str, bytes]]:
    return [(seq, topic, payload) for topic, payload, _ in verdict(seq)]


# ---------------------------------------------------------------- a damaged outbox is moved aside, kept


def foreign_database(path: Path) -> None:
    # The one place outside edge/publish/outbox.py that needs sqlite3: crafting files.
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO messages (body) VALUES ('someone else''s')")
    conn.close()


def outbox_updated(statement: str, value: object) -> Callable[[Path], None]:
    """A valid one-verdict outbox, then ``statement`` run on it with ``value``."""
    def craft(path: Path) -> None:
        with Outbox(path) as outbox:
            outbox.put(1, verdict(1))
        with sqlite3.connect(path) as conn:
            conn.execute(statement, (value,))
        conn.close()
    return craft


def outbox_with_meta(value: object) -> Callable[[Path], None]:
    return outbox_updated("UPDATE meta SET value = ? WHERE key = 'seq'", value)


def outbox_with_message_seq(value: object) -> Callable[[Path], None]:
    return outbox_updated("UPDATE messages SET seq = ?", value)


def newer_version(path: Path) -> None:
    with Outbox(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()


DAMAGED = {
    "text": lambda path: path.write_bytes(b"this is not a database, just some text\n" * 200),
    "damaged-header": lambda path: path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096),
    "foreign": foreign_database,
    "newer-version": newer_version,
    "meta-seq-int64-max": outbox_with_meta(2**63 - 1),
    "meta-seq-negative": outbox_with_meta(-5),
    "meta-seq-text": outbox_with_meta("many"),
    "message-seq-beyond-json": outbox_with_message_seq(2**53),
}


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_outbox_is_refused_by_outbox_and_moved_aside_by_open_outbox(
        outbox_path: Path, damage, caplog: pytest.LogCaptureFixture) -> None:
    outbox_path.parent.mkdir(parents=True)
    damage(outbox_path)
    before = outbox_path.read_bytes()
    with pytest.raises(OutboxCorrupt, match="not a usable outbox database"):
        Outbox(outbox_path)
    with pytest.raises(OutboxCorrupt):
        check_file(outbox_path)
    assert outbox_path.read_bytes() == before, "refusing a file changes nothing in it"

    with caplog.at_level("ERROR", logger="edge.publish.outbox"):
        outbox = open_outbox(outbox_path)
    with outbox:
        assert outbox.recovered_from is not None
        assert re.fullmatch(r"outbox\.sqlite3\.corrupt-\d{8}T\d{6}Z", outbox.recovered_from)
        assert outbox.depth() == 0 and outbox.next_seq() == 1
        outbox.put(1, verdict(1))
    kept = outbox_path.parent / outbox.recovered_from
    assert kept.read_bytes() == before, "the damaged file is kept as it was"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and outbox.recovered_from in errors[0] and "not a usable outbox" in errors[0]
    assert sorted(p.name for p in outbox_path.parent.iterdir() if "corrupt" in p.name) == [kept.name]
    with Outbox(outbox_path) as reopened:  # the fresh outbox is a good one
        assert reopened.recovered_from is None and [m.seq for m in reopened.pending()] == [1, 1]


def test_a_second_recovery_in_the_same_second_keeps_both_files(outbox_path: Path) -> None:
    outbox_path.parent.mkdir(parents=True)
    kept = []
    for content in (b"first damaged file" * 100, b"second damaged file" * 100):
        outbox_path.write_bytes(content)
        Path(f"{outbox_path}-wal").unlink(missing_ok=True)
        Path(f"{outbox_path}-shm").unlink(missing_ok=True)
        with open_outbox(outbox_path) as outbox:
            kept.append(outbox.recovered_from)
    assert len(set(kept)) == 2
    assert {(outbox_path.parent / name).read_bytes()[:5] for name in kept} == {b"first", b"secon"}


def test_a_healthy_outbox_is_opened_not_moved(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.put(1, verdict(1))
    with open_outbox(outbox_path) as outbox:
        assert outbox.recovered_from is None and outbox.depth() == 2
    assert [p.name for p in outbox_path.parent.iterdir() if "corrupt" in p.name] == []


def test_check_file_reads_without_creating_or_changing_anything(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.put(1, verdict(1))
    listing = lambda: {p.name: p.read_bytes() for p in outbox_path.parent.iterdir()}
    before = listing()
    assert set(before) == {outbox_path.name}  # a clean close leaves no side files
    check_file(outbox_path)
    assert listing() == before
    with Outbox(outbox_path) as running:  # a running daemon has it open, with its write-ahead log
        running.put(2, verdict(2))
        check_file(outbox_path)
        assert running.depth() == 4
