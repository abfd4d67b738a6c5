"""One station per storage.dir: a second daemon on the same storage.dir refuses to start (two on one outbox would
give seqs twice), a killed one never blocks the next start, and check-config beside a running station does not
fail on the ports that station holds. Real daemons, a real Mosquitto broker, real sockets."""
from __future__ import annotations

import os
import re
import socket

import pytest

from edge import station_lock
from edge.errors import StorageError
from tests.support.broker import free_port
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import run_cli, wait_until

WAIT_S = 30.0


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path):
    storage = tmp_path / "state"
    assert station_lock.holder(storage) is None and not storage.exists()  # asking creates nothing
    lock = station_lock.take(storage)
    assert station_lock.holder(storage) == os.getpid()
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
    web_port, modbus_port = free_port(), free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), source={"fps": 5, "loop": True},
                          web={"enabled": True, "host": "127.0.0.1", "port": web_port},
                          io={"modbus": {"enabled": True, "host": "127.0.0.1", "port": modbus_port}})
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
            note = (f"{setting}: 127.0.0.1:{port} is in use, most likely by the station running on storage.dir "
                    f"(pid {pid}): not checked")
            assert any(line.endswith(note) and line.startswith(f"{config}:") for line in lines), lines
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
