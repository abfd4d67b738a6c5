"""Tests for the durable SQLite outbox."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.publish.outbox import Outbox, OutboxError, OutboxMessage

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
        seqs = [outbox.next_seq() for _ in range(3)]
        for seq in seqs:
            outbox.put(seq, verdict(seq))
        outbox.ack(m.id for m in outbox.pending())
        assert outbox.depth() == 0
    assert seqs == [1, 2, 3]

    with Outbox(outbox_path) as outbox:
        assert outbox.next_seq() == 4
    with Outbox(outbox_path) as outbox:
        assert outbox.next_seq() == 5


def test_put_with_a_higher_seq_moves_next_seq_past_it(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.put(41, verdict(41))
        assert outbox.next_seq() == 42
    with Outbox(outbox_path) as outbox:
        assert outbox.next_seq() == 43


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
    with Outbox(outbox_path, max_messages=5, when_full="reject_new") as outbox:
        assert outbox.dropped == 4


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
        outbox.next_seq()


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
        # next_seq may have been committed for a verdict whose put was cut off: never reuse either.
        assert outbox.next_seq() in (last_seq + 1, last_seq + 2)


def _expected_rows(seq: int) -> list[tuple[int, str, bytes]]:
    return [(seq, topic, payload) for topic, payload, _ in verdict(seq)]
