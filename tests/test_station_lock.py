"""One station per storage.dir: a second daemon on the same storage.dir refuses to start (two on one outbox would
give seqs twice), a killed one never blocks the next start, and check-config beside a running station does not
fail on the ports that station holds. Real daemons, a real Mosquitto broker, real sockets."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edge import station_lock
from edge.errors import StorageError
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import MNIST_BUNDLE, ROOT, run_cli, wait_until

WAIT_S = 30.0


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path):
    storage = tmp_path / "state"
    assert station_lock.holder(storage) is None and not storage.exists()  # asking creates nothing
    lock = station_lock.take(storage)
    assert station_lock.holder(storage) == station_lock.Holder(os.getpid(), frozenset())
    lock.record(["web.port 127.0.0.1:8080"])
    assert station_lock.holder(storage).listening == {"web.port 127.0.0.1:8080"}
    with pytest.raises(StorageError, match=re.escape(f"another lineguard station runs on it (pid {os.getpid()})")):
        station_lock.take(storage)
    lock.release()
    assert station_lock.holder(storage) is None
    station_lock.release(station_lock.take(storage))


def seqs(collector) -> list[int]:
    return [message["seq"] for message in results(collector)]


def test_a_second_station_on_the_same_storage_dir_refuses_to_start_and_the_first_gives_every_seq_once(
        tmp_path, broker, make_collector):
    collector = make_collector(broker, [f"{BASE}/result"])
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 20, "loop": True})
    first = DaemonProcess(config)
    try:
        assert wait_until(lambda: len(seqs(collector)) >= 10, WAIT_S), first.log()[-3000:]
        second = DaemonProcess(config)
        assert second.wait(60) == 75, second.log()[-3000:]
        assert (f"another lineguard station runs on it (pid {first.process.pid}); stop it first"
                in second.log()), second.log()[-3000:]
        assert first.process.poll() is None  # the first goes on, alone on its outbox
        seen = len(seqs(collector))
        assert wait_until(lambda: len(seqs(collector)) >= seen + 20, WAIT_S)
    finally:
        first.kill()  # SIGKILL: the kernel drops the lock with the process
    third = DaemonProcess(config)
    try:
        assert third.wait_for_log("ready: model", WAIT_S), third.log()[-3000:]
        before = max(seqs(collector))
        assert wait_until(lambda: max(seqs(collector)) >= before + 10, WAIT_S), third.log()[-3000:]
    finally:
        third.kill()
    unique = sorted(set(seqs(collector)))
    assert unique == list(range(1, unique[-1] + 1))  # no seq given twice with two verdicts, none skipped
    by_seq = {}
    for message in results(collector):
        assert by_seq.setdefault(message["seq"], message["image"]) == message["image"], message


def test_check_config_beside_the_running_station_notes_the_ports_it_holds_and_fails_on_a_port_another_holds(
        tmp_path, broker):
    web_port, modbus_port, metrics_port = free_port(), free_port(), free_port()
    ports = {"web": {"enabled": True, "host": "127.0.0.1", "port": web_port},
             "io": {"modbus": {"enabled": True, "host": "127.0.0.1", "port": modbus_port}}}
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 5, "loop": True}, **ports)
    # No station runs: a port another program holds is a problem, on the line of its key.
    with socket.create_server(("127.0.0.1", web_port)):
        checked = run_cli("check-config", config)
    assert checked.returncode == 78, checked.stderr
    assert f"web.port: cannot listen on 127.0.0.1:{web_port}: Address already in use" in checked.stderr

    station = DaemonProcess(config)
    try:
        assert station.wait_for_log("ready: model", WAIT_S), station.log()[-3000:]
        checked = run_cli("check-config", config)
        assert checked.returncode == 0, checked.stderr
        lines = checked.stdout.splitlines()
        assert lines[0] == f"{config}: OK"
        pid = station.process.pid
        for setting, port in (("web.port", web_port), ("io.modbus", modbus_port)):
            note = f"{setting}: 127.0.0.1:{port} is held by the station running on storage.dir (pid {pid}): not checked"
            assert any(line.endswith(note) and line.startswith(f"{config}:") for line in lines), lines
        # The config now asks for a port another program holds: that one is a problem, the station's are not.
        edited = tmp_path / "edited" / "config.yaml"
        edited.parent.mkdir()
        write_config(edited.parent, broker.port, sample_folder(tmp_path), source={"fps": 5, "loop": True},
                     storage={"dir": str(tmp_path / "state")}, metrics={"enabled": True, "host": "127.0.0.1",
                                                                       "port": metrics_port}, **ports)
        with socket.create_server(("127.0.0.1", metrics_port)):
            checked = run_cli("check-config", edited)
        assert checked.returncode == 78, checked.stderr
        assert f"metrics.port: cannot listen on 127.0.0.1:{metrics_port}: Address already in use" in checked.stderr
        assert f"web.port: 127.0.0.1:{web_port} is held by the station running on storage.dir" in checked.stderr
        assert station.process.poll() is None
    finally:
        station.kill()


def test_check_config_probe_beside_a_running_station_leaves_its_camera_alone_and_still_logs_in(tmp_path, broker):
    config = write_config(tmp_path, broker.port, tmp_path, source={"kind": "camera", "index": 7})
    station = DaemonProcess(config)
    try:
        assert station.wait_for_log("ready: model", WAIT_S), station.log()[-3000:]
        checked = run_cli("check-config", "--probe", config)
        assert checked.returncode == 0, checked.stderr
        assert (f"source.kind: the camera was not probed: the station running on storage.dir "
                f"(pid {station.process.pid}) has it open") in checked.stdout
    finally:
        station.kill()
    # Without a station, the probe opens the camera itself and says what is wrong with it.
    checked = run_cli("check-config", "--probe", config)
    assert checked.returncode == 78 and "source.index: cannot open camera /dev/video7" in checked.stderr, \
        checked.stderr


def test_a_lock_file_left_by_another_user_is_locked_read_only_and_still_keeps_a_second_station_out(tmp_path):
    """A run by hand as root leaves station.lock root's (0644): the service's user still takes the lock (flock
    needs no write access), and a second station is kept out. Real processes under another uid."""
    shared = Path(tempfile.mkdtemp(prefix="lineguard-lock-"))  # pytest's folders are root's alone
    package = Path(tempfile.mkdtemp(prefix="lineguard-code-"))
    try:
        os.chmod(shared, 0o777)
        station_lock.release(station_lock.take(shared))  # as root: the file is root's now
        assert (shared / station_lock.LOCK_FILE).stat().st_uid == 0
        # The lock's own module (standard library only), where that user can read it, under the base interpreter.
        (package / "edge").mkdir()
        (package / "edge" / "__init__.py").write_text("")
        for module in ("station_lock.py", "errors.py"):
            shutil.copy(ROOT / "edge" / module, package / "edge" / module)
        os.chmod(package, 0o755)
        hold = ("import sys, time; from edge import station_lock; lock = station_lock.take(sys.argv[1]); "
                "print('locked', flush=True); time.sleep(60)")
        holder = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                                   os.path.realpath(sys.executable), "-c", hold, str(shared)], cwd=package,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
            assert "locked read-only" in holder.stderr.readline()
            with pytest.raises(StorageError, match="another lineguard station runs on it"):
                station_lock.take(shared)
            assert station_lock.holder(shared) is not None
        finally:
            holder.kill()
            holder.wait(10)
        station_lock.release(station_lock.take(shared))  # gone with its process
    finally:
        shutil.rmtree(shared)
        shutil.rmtree(package, ignore_errors=True)


def test_a_page_on_every_address_is_checked_as_it_binds_ipv4_included():
    """The page binds "::" for IPv4 too (as the kernel's default dual stack does): a port an IPv4 program holds
    is in use for it, and check-config says so instead of passing a config `run` would refuse."""
    from edge.ports import Listener, listen_problem

    port = free_port()
    with socket.create_server(("0.0.0.0", port)):
        problem = listen_problem(Listener("web.port", "::", port, dual_stack=True))
    assert problem == f"web.port: cannot listen on :::{port}: Address already in use"
    assert listen_problem(Listener("web.port", "::", port, dual_stack=True)) is None  # free again


def test_a_second_station_turned_away_leaves_the_running_stations_stored_threshold_alone(tmp_path, broker):
    """A second station with another model on the same storage.dir would drop the running one's stored threshold
    (it is another model's to it): the lock is taken before anything is written there."""
    from edge.threshold_store import THRESHOLD_FILE, save_threshold
    from tests.test_threshold_store import TILE_BUNDLE, model_sha

    state = tmp_path / "state"
    state.mkdir()
    save_threshold(state, 30.0, {"name": "mnist-1", "sha256": model_sha(MNIST_BUNDLE)}, "test")
    stored = (state / THRESHOLD_FILE).read_bytes()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 5, "loop": True})
    running = DaemonProcess(config)
    try:
        assert running.wait_for_log("ready: model", WAIT_S), running.log()[-3000:]
        other = tmp_path / "other"
        other.mkdir()
        second = DaemonProcess(write_config(other, broker.port, sample_folder(other), model=str(TILE_BUNDLE),
                                            storage={"dir": str(state)}))
        assert second.wait(60) == 75, second.log()[-3000:]
        assert "another lineguard station runs on it" in second.log()
        assert (state / THRESHOLD_FILE).read_bytes() == stored
        assert not list(state.glob(f"{THRESHOLD_FILE}.dropped-*")), sorted(p.name for p in state.iterdir())
    finally:
        running.kill()
