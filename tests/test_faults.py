"""Faults with real processes: a real Mosquitto, the real daemon process, real files, sockets and HTTP streams.

Broker outage with a SIGKILL in it, a live stream that ends or stalls, broken model bundles, an unusable or
full storage.dir (and tests/test_storage_budget.py), and a hung inference seen through the systemd watchdog.
"""
from __future__ import annotations

import json
import errno
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.core.bundle import MANIFEST_NAME, MODEL_NAME, sha256_of
from edge.exitcodes import EX_TEMPFAIL
from edge.publish.evidence import EvidenceStore
from tests.support.daemon_harness import (
    BASE, DaemonProcess, LoggedProcess, results, sample_folder, unique_in_order, write_config,
)
from tests.support import helpers
from tests.support.broker import strict_json
from tests.support.helpers import MNIST_BUNDLE, run_cli
from tests.support.mjpeg import MjpegServer

WAIT_S = 30.0
POLL_S = 0.05
FPS = 10
BROKER_OUTAGE_S = 30.0  # the figure
KILL_INTO_OUTAGE_S = 10.0
FRAMES_AFTER_RESTART = 60
WATCHDOG_USEC = 1_000_000
IDLE_WATCHDOG_USEC = 4_000_000  # pings every 2 s plus the idle loop's 0.5 s tick: margin for a loaded machine
FRAMES_BEFORE_HANG = 15
HUNG_FOR_S = 3.0  # three watchdog timeouts
STREAM_FPS = 10.0
SMALL_DISK_MB = 16  # room for the outbox's write-ahead log, which grows to about 4 MB before it is reused
QUIET = {"heatmap": "never"}
NO_EVIDENCE = {"evidence": "never"}


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    return helpers.wait_until(condition, timeout_s, POLL_S)


def json_messages(collector, subtopic: str) -> list[dict]:
    return [strict_json(p) for p in collector.payloads(f"{BASE}/{subtopic}")]


def latest(collector, subtopic: str) -> dict:
    messages = json_messages(collector, subtopic)
    return messages[-1] if messages else {}


def wait_for_results(collector, log: Callable[[], str], count: int, timeout_s: float = WAIT_S) -> list[dict]:
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= count, timeout_s), log()[-3000:]
    return unique_in_order(results(collector))


def assert_gap_free_and_in_order(got: list[dict]) -> None:
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))


def log_lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


@pytest.fixture
def processes() -> Iterator[list[LoggedProcess]]:
    """Processes the test starts; any still running at the end is killed."""
    started: list[LoggedProcess] = []
    yield started
    for process in started:
        process.kill()


class NotifyListener:
    """Stands in for systemd: an AF_UNIX datagram socket that records each sd_notify message and when it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(POLL_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def pings(self, since_s: float = 0.0) -> list[float]:
        return [t for t, text in list(self.messages) if t >= since_s and "WATCHDOG=1" in text.split("\n")]

    def statuses(self) -> list[str]:
        return [line[len("STATUS="):] for _, text in list(self.messages) for line in text.split("\n")
                if line.startswith("STATUS=")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


# ---------------------------------------------------------------- broker outage with a SIGKILL in it


def outbox_rows_and_last_seq(state_dir: Path) -> tuple[int, int]:
    with sqlite3.connect(state_dir / "outbox.sqlite3") as db:
        rows = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        last_seq = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0]
    return rows, last_seq


@pytest.mark.slow
def test_30_s_broker_outage_with_a_sigkill_in_it_delivers_every_verdict_in_order(tmp_path, make_broker, make_collector):
    broker = make_broker(persistence=True)
    frames = sample_folder(tmp_path)
    config = write_config(tmp_path, broker.port, frames, source={"fps": FPS, "loop": True}, mqtt=QUIET,
                          storage={"dir": str(tmp_path / "state"), "drain_timeout_s": 60, **NO_EVIDENCE})
    collector = make_collector(broker, [f"{BASE}/result"], client_id="dashboard", clean_session=False)
    first = DaemonProcess(config)
    try:
        before_outage = len(wait_for_results(collector, first.log, 5))
        broker.stop()
        outage_started_s = time.monotonic()
        threading.Event().wait(KILL_INTO_OUTAGE_S)
        first.kill()  # mid-replay, mid-outage: what it inspected is only in its outbox
    finally:
        first.kill()
    second = DaemonProcess(config, None, "--max-frames", str(FRAMES_AFTER_RESTART))
    try:
        threading.Event().wait(max(0.0, outage_started_s + BROKER_OUTAGE_S - time.monotonic()))
        broker.start()
        assert second.wait(90) == 0, second.log()[-3000:]
    finally:
        second.kill()

    rows_left, last_seq = outbox_rows_and_last_seq(tmp_path / "state")
    assert rows_left == 0, second.log()[-3000:]
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= last_seq, 20)
    got = unique_in_order(results(collector))  # also checks that a repeated id is an exact repeat
    assert_gap_free_and_in_order(got)
    assert len(got) == last_seq
    from_first = len(got) - FRAMES_AFTER_RESTART
    assert from_first > before_outage, "the killed daemon's outage verdicts came from its outbox after the restart"


# ---------------------------------------------------------------- a live stream that ends or stalls


@pytest.fixture
def camera() -> Iterator[MjpegServer]:
    server = MjpegServer(fps=STREAM_FPS)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_stream_that_ends_or_stalls_is_reconnected_reported_and_flows_again(
        tmp_path, broker, make_collector, camera, notify):
    source = {"kind": "stream", "url": camera.url, "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0,
              "read_timeout_s": 1.0}
    config = write_config(tmp_path, broker.port, tmp_path, source=source, mqtt=QUIET, storage=NO_EVIDENCE)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config, notify.env(WATCHDOG_USEC))
    count = lambda: len(unique_in_order(results(collector)))
    state = lambda: latest(collector, "state")
    try:
        wait_for_results(collector, daemon.log, 3)
        for outage in ("ended", "stalled"):
            if outage == "ended":
                camera.stop()
            else:
                camera.paused.set()
            assert collector.wait_for(lambda _: state().get("source") == "reconnecting", WAIT_S), daemon.log()[-3000:]
            if outage == "stalled":
                assert "stalled" in state()["detail"]
            outage_s = time.monotonic()
            assert collector.wait_for(lambda _: latest(collector, "stats").get("source", {}).get("reconnects", 0) >= 1
                                      and latest(collector, "stats")["source"]["state"] == "reconnecting", WAIT_S)
            assert any(s.startswith("source reconnecting") for s in notify.statuses())
            threading.Event().wait(2 * WATCHDOG_USEC / 1e6)
            assert len(notify.pings(since_s=outage_s)) >= 2, "the loop stays alive while the camera is away"
            assert daemon.process.poll() is None
            if outage == "ended":
                camera.start()  # same port
            else:
                camera.paused.clear()
            assert collector.wait_for(lambda _: state().get("source") == "running", WAIT_S), daemon.log()[-3000:]
            flowing_again_from = count()
            wait_for_results(collector, daemon.log, flowing_again_from + 3)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    assert_gap_free_and_in_order(unique_in_order(results(collector)))
    assert "Traceback" not in daemon.log()


# ---------------------------------------------------------------- broken model bundles


def copy_bundle(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(MNIST_BUNDLE, tmp_path / name))


def edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(manifest)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


def replace_atomically(path: Path, data: bytes) -> None:
    """How a deploy should land a file: the running model keeps the old one open (the runtime maps it)."""
    temp = path.with_name(f".{path.name}.new")
    temp.write_bytes(data)
    os.replace(temp, path)


def truncated_model(bundle: Path) -> str:
    replace_atomically(bundle / MODEL_NAME, (bundle / MODEL_NAME).read_bytes()[:4096])
    return "does not match model.json"


def corrupt_model_with_matching_hash(bundle: Path) -> str:
    model = bundle / MODEL_NAME
    data = bytearray(model.read_bytes())
    data[100:1100] = bytes(1000)
    replace_atomically(model, bytes(data))
    edit_manifest(bundle, lambda m: m["stages"][0].update(sha256=sha256_of(model)))
    return "not a loadable TFLite model"


def manifest_promising_another_shape(bundle: Path) -> str:
    def edit(manifest: dict) -> None:
        manifest["preprocess"].update(height=32, width=32)
        manifest["input"]["shape"] = [1, 32, 32, 1]
    edit_manifest(bundle, edit)
    return "promises [1, 32, 32, 1]"


def manifest_of_a_future_format(bundle: Path) -> str:
    edit_manifest(bundle, lambda m: m.update(format_version=99))
    return "format_version 99 is not supported"


BREAKERS = [truncated_model, corrupt_model_with_matching_hash, manifest_promising_another_shape,
            manifest_of_a_future_format]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_broken_bundle_stops_start_with_one_clear_line_and_exit_78(tmp_path, breaker):
    bundle = copy_bundle(tmp_path, "broken")
    expected = breaker(bundle)
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), model=str(bundle))
    out = run_cli("run", "--config", config, timeout=60)
    assert out.returncode == 78, out.stderr[-3000:]
    errors = log_lines_with(out.stderr, "cannot start:")
    assert len(errors) == 1 and expected in errors[0] and str(bundle) in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    after = out.stderr[out.stderr.index(errors[0]) + len(errors[0]):]
    assert not after.strip(), f"the error continues on more lines: {after!r}"


@pytest.mark.slow
def test_reload_to_a_broken_model_keeps_the_running_one(tmp_path, broker, make_collector):
    running = copy_bundle(tmp_path, "running")
    running_sha = sha256_of(running / MODEL_NAME)
    frames = sample_folder(tmp_path)
    live = dict(source={"fps": FPS, "loop": True}, mqtt=QUIET, storage=NO_EVIDENCE)
    config = write_config(tmp_path, broker.port, frames, model=str(running), **live)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    reload_replies = lambda: [r for r in json_messages(collector, "reply") if r["command"] == "reload"]
    try:
        wait_for_results(collector, daemon.log, 3)
        for attempt, breaker in enumerate(BREAKERS):
            if breaker is truncated_model:
                expected = breaker(running)  # the running bundle itself, swapped under the daemon
                daemon.signal(signal.SIGHUP)
            else:
                expected = breaker(copy_bundle(tmp_path, breaker.__name__))
                write_config(tmp_path, broker.port, frames, model=str(tmp_path / breaker.__name__), **live)
                collector.publish(f"{BASE}/cmd/reload", json.dumps({"request_id": breaker.__name__}))
            assert collector.wait_for(lambda _: len(reload_replies()) > attempt, WAIT_S), daemon.log()[-3000:]
            reply = reload_replies()[attempt]
            assert reply["ok"] is False and expected in reply["reason"], reply
            assert collector.wait_for(lambda _: expected in (latest(collector, "state").get("last_reload_error") or ""),
                                      10)
            assert collector.wait_for(lambda _: expected in (latest(collector, "stats").get("last_reload_error") or ""),
                                      10)
            wait_for_results(collector, daemon.log, len(unique_in_order(results(collector))) + 3)
        assert daemon.process.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    got = unique_in_order(results(collector))
    assert_gap_free_and_in_order(got)
    assert {r["model"]["sha256"] for r in got} == {running_sha}
    refusals = log_lines_with(daemon.log(), "reload refused, keeping the running config and model")
    assert len(refusals) == len(BREAKERS)
    assert "Traceback" not in daemon.log()


# ---------------------------------------------------------------- storage.dir unusable or full


def test_evidence_folder_turned_into_a_file_stops_evidence_not_verdicts(tmp_path, broker, make_collector):
    frames = sample_folder(tmp_path)
    state_dir = tmp_path / "state"
    config = write_config(tmp_path, broker.port, frames, source={"fps": FPS, "loop": True}, mqtt=QUIET,
                          storage={"dir": str(state_dir), "evidence": "always"})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    evidence = state_dir / "evidence"
    try:
        wait_for_results(collector, daemon.log, 3)
        assert wait_until(lambda: any(evidence.glob("*-heat.jpg")))
        evidence.rename(state_dir / "evidence-moved")
        evidence.write_text("not a folder any more")
        broken_at = len(unique_in_order(results(collector)))
        stats = lambda: latest(collector, "stats").get("evidence", {})
        assert collector.wait_for(lambda _: stats().get("errors", 0) >= 3, WAIT_S), daemon.log()[-3000:]
        # Which error comes first depends on where the writer was when the folder went away.
        assert any(e in stats()["last_error"] for e in ("Not a directory", "No such file or directory"))
        wait_for_results(collector, daemon.log, broken_at + 10)
        assert latest(collector, "stats")["outbox"]["errors"] == 0
        assert daemon.process.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    assert len(log_lines_with(daemon.log(), "evidence not saved")) == 1
    assert_gap_free_and_in_order(unique_in_order(results(collector)))


def test_evidence_quota_cleanup_on_a_vanished_folder_does_not_raise(tmp_path):
    folder = tmp_path / "evidence"
    store = EvidenceStore(folder, quota_bytes=10**9)
    image = np.full((28, 28), 128, np.uint8)
    store.save("000000001-part", {"": image})
    assert store.saved == 1
    shutil.rmtree(folder)
    folder.write_text("not a folder any more")
    store.quota_bytes = 0  # e.g. lowered by a reload: the next save also cleans up
    store.save("000000002-part", {"": image})
    assert store.errors >= 1 and "Not a directory" in store.last_error


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real file system of SMALL_DISK_MB (tmpfs), so a full disk is ENOSPC for every writer."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_MB}m,mode=0755", "tmpfs", str(mount_point)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here ({out.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system with one file until ENOSPC, or until only ``leave_bytes`` are free. The disk is
    never full on the way to leave_bytes: a daemon writing meanwhile must see only what the test means."""
    filler = disk / f"filler-{time.monotonic_ns()}"
    chunk = 64 * 1024
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: closing has nothing left to write
        try:
            while not leave_bytes or (free := shutil.disk_usage(disk).free - leave_bytes) > 0:
                handle.write(bytes(min(chunk, free) if leave_bytes else chunk))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True, capture_output=True)


def storage_config(tmp_path: Path, port: int | None, state: Path, frames: Path | None = None, **storage) -> Path:
    return write_config(tmp_path, port, frames or sample_folder(tmp_path, count=4), mqtt=QUIET,
                        storage={"dir": str(state), **NO_EVIDENCE, **storage})


def one_error_line(log: str, *texts: str) -> str:
    """The one line that says why it did not start, with one of ``texts`` in it."""
    errors = log_lines_with(log, "cannot start:")
    assert len(errors) == 1 and any(text in errors[0] for text in texts), log[-3000:]
    assert "Traceback" not in log
    return errors[0]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_storage_fault_at_start_exits_75_check_config_finds_it_and_a_restart_works_once_it_is_gone(
        tmp_path, small_disk, broker, make_collector, fault):
    state = small_disk / "state"
    config = storage_config(tmp_path, broker.port, state)
    if fault == "full":
        filler = fill(small_disk)
        expected = ("No space left on device", "database or disk is full")  # the OS's words, or SQLite's
    else:
        remount(small_disk, "ro")
        expected = ("Read-only file system", "readonly database")

    checked = run_cli("check-config", config, timeout=60)
    assert checked.returncode == EX_TEMPFAIL, checked.stderr[-3000:]  # what run exits with, below
    problems = [line for line in checked.stderr.splitlines() if "storage.dir" in line]
    assert len(problems) == 1 and str(state) in problems[0], checked.stderr[-3000:]
    assert any(text in problems[0] for text in expected), problems
    assert "Traceback" not in checked.stderr
    assert not state.exists(), "check-config leaves nothing behind"

    out = run_cli("run", "--config", config, timeout=60)
    assert out.returncode == EX_TEMPFAIL, out.stderr[-3000:]
    one_error_line(out.stderr, *expected)

    if fault == "full":
        filler.unlink()
    else:
        remount(small_disk, "rw")
    assert run_cli("check-config", config, timeout=60).returncode == 0
    collector = make_collector(broker, [f"{BASE}/result"])
    out = run_cli("run", "--config", config, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= 4, WAIT_S)
    assert_gap_free_and_in_order(unique_in_order(results(collector)))


def test_a_full_disk_with_an_outbox_from_earlier_still_starts_or_exits_75_never_78(tmp_path, small_disk, broker):
    state = small_disk / "state"
    config = storage_config(tmp_path, broker.port, state)
    assert run_cli("run", "--config", config, timeout=60).returncode == 0
    filler = fill(small_disk)
    out = run_cli("run", "--config", config, timeout=60)
    assert out.returncode in (0, EX_TEMPFAIL), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    filler.unlink()


CORRUPTIONS = {
    "garbage": lambda path: path.write_bytes(b"\x00garbage, not a database\n" * 500),
    "seq-near-int64-max": lambda path: _set_meta_seq(path, 2**63 - 2),
}


def _set_meta_seq(path: Path, value: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (value,))
    db.close()


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_outbox_is_moved_aside_reported_and_inspection_goes_on(tmp_path, broker, make_collector, corrupt):
    state = tmp_path / "state"
    config = storage_config(tmp_path, broker.port, state, evidence="always")
    assert run_cli("run", "--config", config, timeout=60).returncode == 0  # an outbox of seq 1..4, evidence
    evidence_before = sorted(p.name for p in state.rglob("*") if "outbox" not in p.name)
    assert len(evidence_before) > 4
    outbox_file = state / "outbox.sqlite3"
    corrupt(outbox_file)
    damaged = outbox_file.read_bytes()

    checked = run_cli("check-config", config, timeout=60)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "run will move it aside" in checked.stderr and "Traceback" not in checked.stderr
    assert outbox_file.read_bytes() == damaged

    collector = make_collector(broker, [f"{BASE}/#"])
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=4), mqtt=QUIET,
                          source={"fps": FPS, "loop": True}, storage={"dir": str(state), **NO_EVIDENCE})
    daemon = DaemonProcess(config)
    try:
        wait_for_results(collector, daemon.log, 3)
        stats = lambda: latest(collector, "stats").get("outbox", {})
        assert collector.wait_for(lambda _: stats().get("recovered_from"), WAIT_S), daemon.log()[-3000:]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    kept = state / stats()["recovered_from"]
    assert kept.read_bytes() == damaged, "the damaged outbox is kept as it was"
    errors = log_lines_with(daemon.log(), "moved it aside")
    assert len(errors) == 1 and kept.name in errors[0] and " ERROR " in errors[0], daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()
    assert_gap_free_and_in_order(unique_in_order(results(collector)))  # a fresh outbox starts at seq 1
    assert sorted(p.name for p in state.rglob("*") if "outbox" not in p.name) == evidence_before


def test_evidence_pauses_below_the_reserve_and_resumes_when_space_returns(tmp_path, small_disk, broker,
                                                                           make_collector):
    reserve_mb = 4
    frames = sample_folder(tmp_path)
    config = write_config(tmp_path, broker.port, frames, source={"fps": FPS, "loop": True}, mqtt=QUIET,
                          storage={"dir": str(small_disk / "state"), "evidence": "always",
                                   "reserve_mb": reserve_mb})
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config)
    evidence = lambda: latest(collector, "stats").get("evidence", {})
    try:
        assert collector.wait_for(lambda _: evidence().get("saved", 0) >= 3, WAIT_S), daemon.log()[-3000:]
        filler = fill(small_disk, leave_bytes=reserve_mb * 1_000_000 // 2)
        assert collector.wait_for(lambda _: evidence().get("low_space") and evidence()["skipped_low_space"] >= 5,
                                  WAIT_S), evidence()
        paused_at = evidence()["saved"]
        wait_for_results(collector, daemon.log, len(unique_in_order(results(collector))) + 10)
        stats = latest(collector, "stats")
        assert stats["evidence"]["errors"] == 0 and stats["outbox"]["errors"] == 0, stats
        assert stats["evidence"]["saved"] <= paused_at + 1  # at most one save was under way
        assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize > reserve_mb * 1_000_000 // 4

        filler.unlink()
        assert collector.wait_for(lambda _: not evidence().get("low_space") and evidence()["saved"] > paused_at + 3,
                                  WAIT_S), evidence()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
    finally:
        daemon.kill()
    assert len(log_lines_with(daemon.log(), "evidence paused")) == 1
    assert len(log_lines_with(daemon.log(), "evidence saving resumed")) == 1
    assert_gap_free_and_in_order(unique_in_order(results(collector)))


# ---------------------------------------------------------------- the systemd watchdog

HANG_WRAPPER = (
    "import sys, threading\n"
    "import edge.core.runtime\n"
    "after, original, done = int(sys.argv[1]), edge.core.runtime.TFLiteStage.run, [0]\n"
    "def run(self, *args, **kwargs):\n"
    "    done[0] += 1\n"
    "    if done[0] > after:\n"
    "        print('INFERENCE HANGS NOW', file=sys.stderr, flush=True)\n"
    "        threading.Event().wait()\n"
    "    return original(self, *args, **kwargs)\n"
    "edge.core.runtime.TFLiteStage.run = run\n"
    "from edge.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@pytest.mark.slow
def test_hung_inference_stops_the_watchdog_pings_while_the_process_lives(tmp_path, broker, notify, processes):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": FPS, "loop": True},
                          mqtt=QUIET, storage=NO_EVIDENCE)
    daemon = LoggedProcess(HANG_WRAPPER, [str(FRAMES_BEFORE_HANG), "run", "--config", str(config)],
                           tmp_path / "daemon.log", notify.env(WATCHDOG_USEC))
    processes.append(daemon)
    assert daemon.wait_for_log("INFERENCE HANGS NOW", WAIT_S), daemon.log()[-3000:]
    hung_s = time.monotonic()
    threading.Event().wait(HUNG_FOR_S)

    assert daemon.process.poll() is None
    assert len(notify.pings()) >= 2, notify.messages  # while it worked
    # One ping interval of grace: the last ping before the hang may be stamped late by a busy listener.
    late_pings = [t - hung_s for t in notify.pings(since_s=hung_s + WATCHDOG_USEC / 2e6)]
    assert late_pings == [], f"pings {late_pings} s after inference hung"
    assert time.monotonic() - max(notify.pings()) > 2.5 * WATCHDOG_USEC / 1e6


@pytest.mark.slow
def test_idle_trigger_mode_keeps_pinging_the_watchdog(tmp_path, broker, make_collector, notify):
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=2), trigger={"mode": "mqtt"},
                          source={"fps": 0, "loop": True}, mqtt=QUIET, storage=NO_EVIDENCE)
    collector = make_collector(broker, [f"{BASE}/#"])
    daemon = DaemonProcess(config, notify.env(IDLE_WATCHDOG_USEC))
    try:
        assert collector.wait_for(lambda m: any(x.payload == b"online" for x in m), WAIT_S), daemon.log()[-3000:]
        idle_from_s = time.monotonic()
        threading.Event().wait(3 * IDLE_WATCHDOG_USEC / 1e6)
        pings = notify.pings(since_s=idle_from_s)
        assert results(collector) == []  # nothing inspected: no trigger came
        assert len(pings) >= 3, notify.messages
        gaps = np.diff([idle_from_s, *pings, time.monotonic()])
        assert gaps.max() < IDLE_WATCHDOG_USEC / 1e6, gaps
        collector.publish(f"{BASE}/cmd/trigger", b'{"part_id": "P-1"}')
        assert collector.wait_for(lambda _: results(collector), WAIT_S)  # and it still works when asked
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()


# ---------------------------------------------------------------- the acceptance run, shortened


@pytest.mark.slow
def test_kill_and_outage_run_delivers_exactly_seq_1_to_n(capsys):
    """benchmarks/kill_outage.py with fewer kills and a shorter outage: the same checks, exit 0 only if they hold."""
    from benchmarks import kill_outage

    code = kill_outage.main(["--kills", "3", "--outage-s", "5", "--fps", "100", "--no-save"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert summary["seq_missing_count"] == 0 and summary["seq_given_twice"] == 0, summary
    assert summary["duplicates_differing_from_first"] == 0 and summary["sigkills"] == 4, summary
    assert summary["n"] == summary["outbox_last_seq"] > 0, summary
