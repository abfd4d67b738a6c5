"""Running the real daemon as a process against a real broker, for the daemon and fault tests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.broker import strict_json
from tests.support.helpers import MNIST_BUNDLE, ROOT, SAMPLES, run_cli, wait_until

DEVICE = "cell-7"
PREFIX = "lineguard"
BASE = f"{PREFIX}/{DEVICE}"

# The daemon runs in a wrapper that fails loudly if anything imported TensorFlow.
NO_TENSORFLOW_WRAPPER = (
    "import sys\n"
    "from edge.cli import main\n"
    "code = main()\n"
    "if any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules):\n"
    "    print('TENSORFLOW WAS IMPORTED', file=sys.stderr); sys.exit(99)\n"
    "sys.exit(code)\n"
)


def sample_folder(tmp_path: Path, count: int | None = None) -> Path:
    """A copy of the bundled sample frames (real MNIST 1s and 9s)."""
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    for path in sorted(SAMPLES.glob("*.png"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def write_config(tmp_path: Path, port: int | None, frames: Path, **sections) -> Path:
    """A config for one test; keyword arguments override whole sections' keys."""
    config = {
        "device_id": DEVICE,
        "model": str(MNIST_BUNDLE),
        "source": {"kind": "folder", "path": str(frames), "fps": 0},
        "mqtt": {"host": "127.0.0.1", "port": port or 1, "topic_prefix": PREFIX, "stats_interval_s": 1,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        "storage": {"dir": str(tmp_path / "state"), "drain_timeout_s": 20},
        "web": {"enabled": False},  # tests that use the page give it a free port
    }
    for section, values in sections.items():
        if section == "source" and values.get("kind", "folder") != "folder":
            config["source"] = {"fps": 0}  # another kind takes none of the folder's keys (path, loop)
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
    return path


class LoggedProcess:
    """A process whose output is copied through a pipe into a log file.

    The log file lives apart from the daemon's storage, so it survives the full or read-only disks the fault
    tests give the daemon.
    """

    def __init__(self, code: str, args: list[str], log_path: Path, extra_env: dict | None = None) -> None:
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})},
        )
        self._copier = threading.Thread(target=self._copy_output, name="log-copier", daemon=True)
        self._copier.start()

    def _copy_output(self) -> None:
        with open(self.log_path, "ab") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout_s: float = 30) -> bool:
        """Wait until ``text`` is in the log; stop early if the process ended."""
        wait_until(lambda: text in self.log() or self.process.poll() is not None, timeout_s)
        if self.process.poll() is not None:
            self._copier.join(5)  # the last lines may still be in the pipe
        return text in self.log()

    def signal(self, sig: int) -> None:  # a signal.Signals member
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        code = self.process.wait(timeout_s)
        self._copier.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait(10)


class DaemonProcess(LoggedProcess):
    """`lineguard run` in its own process, checked for never importing TensorFlow."""

    def __init__(self, config: Path, extra_env: dict | None = None, *args: str) -> None:
        super().__init__(NO_TENSORFLOW_WRAPPER, ["run", "--config", str(config), *args],
                         config.parent / f"daemon-{time.monotonic_ns()}.log", extra_env)


def results(collector, topic: str = f"{BASE}/result") -> list[dict]:
    return [strict_json(p) for p in collector.payloads(topic)]


def unique_in_order(messages: list[dict]) -> list[dict]:
    """First occurrence of each id; the only duplicates allowed are exact repeats of an id."""
    seen: dict[str, dict] = {}
    for message in messages:
        if message["id"] in seen:
            assert seen[message["id"]] == message, "a repeated id carried a different payload"
            continue
        seen[message["id"]] = message
    return list(seen.values())


def replay_to_end(config: Path, collector) -> tuple[list[Path], list[dict]]:
    """Run a finite folder replay to its clean end; the frame files in name order and the results received."""
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    files = sorted(Path(json.loads(config.read_text())["source"]["path"]).glob("*.png"))
    assert collector.wait_for(lambda m: sum(x.topic == f"{BASE}/result" for x in m) >= len(files), 10)
    return files, unique_in_order(results(collector))


def score_cli(paths) -> dict[str, dict]:
    """`lineguard score` of these files with the bundled model, by file name."""
    out = run_cli("score", "--model", MNIST_BUNDLE, *paths)
    assert out.returncode == 0, out.stderr
    lines = [strict_json(line) for line in out.stdout.splitlines()]
    return {line["image"].rsplit("/", 1)[-1]: line for line in lines}
