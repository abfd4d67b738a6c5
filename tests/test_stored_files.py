"""Files the station reads at start and on reload besides the config (the stored threshold, the password
files, a bundle's head and calibration scores) are read bounded and from regular files only: a FIFO, a device,
a huge file, deep nesting or an unusable number stops `run` and `check-config` with exit 78 and one line naming
the file, within seconds, never a traceback, a hang or a read that fills the memory. Real processes, real files."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from edge.threshold_store import THRESHOLD_FILE
from tests.support.broker import free_port
from tests.support.daemon_harness import DaemonProcess, sample_folder, write_config
from tests.support.helpers import LINEGUARD, MNIST_BUNDLE, ROOT, wait_until
from tests.test_threshold_store import model_sha

HANG_S = 30  # far above a normal start (about a second): reaching it means the process hung
MEMORY_CAP_BYTES = 3 << 30  # a read without a bound fails at this address-space cap, not by exhausting the machine
HUGE_BYTES = 700 * 1024 * 1024  # sparse: no disk space taken, but reading it all would take that much memory


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def lineguard(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A real `lineguard` process; TimeoutExpired (the process is killed) means it hung."""
    return subprocess.run([*LINEGUARD, *map(str, args)], capture_output=True, text=True, timeout=HANG_S, cwd=ROOT,
                          env={**os.environ, **(env or {})}, preexec_fn=_cap_memory)


def make_bad(path: Path, kind: str) -> None:
    """Put a file at ``path`` that must be refused: a named pipe, a device, a huge file or a folder."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)  # no writer: an ordinary open() waits forever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(HUGE_BYTES)
    elif kind == "folder":
        path.mkdir()


NOT_REGULAR = {"fifo": "named pipe", "device": "a device", "huge": "above the limit", "folder": "a folder"}


def assert_refused(result: subprocess.CompletedProcess, path: Path, expected: str, code: int = 78) -> None:
    """Exit ``code`` and one line naming the file and the problem; no traceback."""
    lines = [line for line in result.stderr.splitlines() if str(path) in line]
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-3000:]


def run_and_check(config: Path, path: Path, expected: str, env: dict | None = None, code: int = 78) -> None:
    """`check-config` and `run` both refuse it, the same way."""
    assert_refused(lineguard("check-config", config, env=env), path, expected, code)
    run = lineguard("run", "--config", config, env=env)
    assert_refused(run, path, expected, code)
    assert "cannot start" in next(line for line in run.stderr.splitlines() if str(path) in line)
    assert "PASS" not in run.stderr and "FAIL" not in run.stderr


# ---------------------------------------------------------------- storage.dir/threshold.json

def own_record(value: str) -> str:
    """A stored threshold of the running model, its value as raw JSON text."""
    model = json.dumps({"name": "mnist-1", "sha256": model_sha(MNIST_BUNDLE)})
    return f'{{"threshold": {value}, "model": {model}}}'


BAD_CONTENT = {
    "deep nesting": ("[" * 50_000, "not a stored threshold"),
    "deep nesting past the size limit": ("[" * 100_000, "above the limit"),
    "huge integer": (own_record("1" + "0" * 400), "is not a finite number > 0"),
    "NaN": (own_record("NaN"), "is not a finite number > 0"),
    "Infinity": (own_record("Infinity"), "is not a finite number > 0"),
    "overflowing float": (own_record("1e400"), "is not a finite number > 0"),
    "negative": (own_record("-5"), "is not a finite number > 0"),
    "not a number": (own_record('"high"'), "is not a finite number > 0"),
    "not UTF-8": (b'{"threshold": "\xff"}', "not a stored threshold"),
}


@pytest.fixture
def station(tmp_path) -> Path:
    return write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False})


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_a_stored_threshold_that_is_no_usable_number_is_refused_in_one_line(tmp_path, station, case):
    content, expected = BAD_CONTENT[case]
    stored = tmp_path / "state" / THRESHOLD_FILE
    stored.parent.mkdir()
    stored.write_bytes(content if isinstance(content, bytes) else content.encode())
    run_and_check(station, stored, expected)
    assert stored.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # left for a person


@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_a_stored_threshold_that_is_no_regular_small_file_is_refused_without_reading_it(tmp_path, station, kind):
    stored = tmp_path / "state" / THRESHOLD_FILE
    stored.parent.mkdir()
    make_bad(stored, kind)
    run_and_check(station, stored, NOT_REGULAR[kind])


# ---------------------------------------------------------------- password files

@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_broker_password_file_that_is_no_regular_small_file_is_refused(tmp_path, kind):
    secret = tmp_path / "mqtt-password"
    make_bad(secret, kind)
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2),
                          mqtt={"username": "line-7", "password_file": str(secret)})
    run_and_check(config, secret, NOT_REGULAR[kind])


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_page_password_file_that_is_no_regular_small_file_is_refused(tmp_path, kind):
    secret = tmp_path / "web-password"
    make_bad(secret, kind)
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False},
                          web={"enabled": True, "port": free_port(), "password_file": str(secret)})
    run_and_check(config, secret, NOT_REGULAR[kind])


def test_a_systemd_credential_that_is_no_regular_file_is_refused_not_skipped(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    make_bad(credentials / "web_password", "device")
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), mqtt={"enabled": False},
                          web={"enabled": True, "port": free_port()})
    run_and_check(config, credentials / "web_password", "a device", env={"CREDENTIALS_DIRECTORY": str(credentials)})


# ---------------------------------------------------------------- files inside a bundle

@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_bundle_head_file_that_is_no_regular_file_of_bounded_size_is_refused(tmp_path, kind):
    bundle = Path(shutil.copytree(ROOT / "models" / "magnetic-tile", tmp_path / "tiles"))
    make_bad(bundle / "head.npz", kind)
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), model=str(bundle),
                          mqtt={"enabled": False})
    run_and_check(config, bundle / "head.npz", NOT_REGULAR[kind])


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_calibration_scores_that_are_no_regular_small_file_leave_the_page_answering(tmp_path, kind):
    bundle = Path(shutil.copytree(MNIST_BUNDLE, tmp_path / "mnist-1"))
    scores = bundle / "report" / "scores.csv"
    make_bad(scores, kind)
    port = free_port()
    config = write_config(tmp_path, None, sample_folder(tmp_path, count=2), model=str(bundle),
                          mqtt={"enabled": False}, web={"enabled": True, "port": port})
    daemon = DaemonProcess(config, None, "--keep-serving")
    try:
        assert daemon.wait_for_log("the station page stays up", HANG_S), daemon.log()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/scores", timeout=10) as response:
            assert json.loads(response.read())["calibration"] == []
        assert wait_until(lambda: str(scores) in daemon.log(), 5), daemon.log()[-3000:]
        line = next(line for line in daemon.log().splitlines() if str(scores) in line)
        assert "WARNING" in line and NOT_REGULAR[kind] in line
    finally:
        daemon.kill()


# ---------------------------------------------------------------- storage.dir/outbox.sqlite3

@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_outbox_that_is_no_regular_file_is_a_storage_fault_not_a_hang(tmp_path, station, kind):
    outbox = tmp_path / "state" / "outbox.sqlite3"
    outbox.parent.mkdir()
    make_bad(outbox, kind)
    run_and_check(station, outbox, NOT_REGULAR[kind], code=75)  # storage.dir's exit code: systemd retries
