"""The Modbus TCP slave of a real daemon process, driven by a real pymodbus client on a loopback port: the trigger
coil inspects a part, and the verdict registers hold exactly the `result` published with the same seq."""
from __future__ import annotations

import signal
import socket
import struct
import time

import pytest
from pymodbus.client import ModbusTcpClient

from tests.support.broker import free_port, strict_json
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, write_config
from tests.support.helpers import run_cli, wait_until
from tests.support.mjpeg import MjpegServer

# The register map, as README.md documents it (read here from the README's numbers, not from edge/).
IR_VERDICT, IR_SCORE_X100, IR_SCORE_NORM_X100, IR_SEQ = 0, 1, 2, 3
IR_PASS_COUNT, IR_FAIL_COUNT, IR_BUSY_COUNT, IR_ANSWER_COUNT = 5, 7, 9, 11
IR_LAST_ANSWER, IR_LAST_ANSWER_SEQ, IR_READY, IR_BUSY = 13, 14, 16, 17
REGISTERS = 18
VERDICTS = {1: "pass", 2: "fail", 3: "unscorable"}
ANSWER_INSPECTED = 1
DELAY_MS = 1500  # the busy window the busy test aims into: wide enough for a loaded machine


def uint32(words: list[int], address: int) -> int:
    return words[address] << 16 | words[address + 1]


class Plc:
    """What a PLC does: read the registers, write the trigger coil, wait for the answer count to move."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
        assert self.client.connect()

    def registers(self, holding: bool = False) -> list[int]:
        read = self.client.read_holding_registers if holding else self.client.read_input_registers
        response = read(0, count=REGISTERS, device_id=1)
        assert not response.isError(), response
        return response.registers

    def inputs(self) -> list[bool]:
        response = self.client.read_discrete_inputs(0, count=4, device_id=1)
        assert not response.isError(), response
        return response.bits[:4]

    def trigger(self) -> None:
        assert not self.client.write_coil(0, True, device_id=1).isError()

    def wait_answers(self, count: int) -> list[int]:
        assert wait_until(lambda: uint32(self.registers(), IR_ANSWER_COUNT) >= count, 15), self.registers()
        return self.registers()


@pytest.fixture
def station(tmp_path, broker, make_collector):
    port = free_port()
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path, count=6), source={"fps": 0, "loop": True},
                          trigger={"mode": "triggered", "delay_ms": DELAY_MS},
                          io={"modbus": {"enabled": True, "host": "127.0.0.1", "port": port}})
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/stats"])
    daemon = DaemonProcess(config)
    assert daemon.wait_for_log("ready:", 60), daemon.log()[-3000:]
    plc = Plc(port)
    yield daemon, collector, plc
    plc.client.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_the_trigger_coil_inspects_and_the_registers_hold_that_result(station):
    daemon, collector, plc = station
    assert wait_until(lambda: plc.registers()[IR_READY] == 1, 10)  # once the frame loop runs
    words = plc.registers()
    assert (words[IR_READY], words[IR_BUSY], uint32(words, IR_ANSWER_COUNT)) == (1, 0, 0)
    assert plc.inputs() == [True, False, False, False]  # ready, not busy, no verdict yet
    for count in range(1, 7):  # the sample frames hold good parts and defects: both verdicts are seen
        plc.trigger()
        words = plc.wait_answers(count)
        assert words[IR_LAST_ANSWER] == ANSWER_INSPECTED
        seq = uint32(words, IR_LAST_ANSWER_SEQ)
        assert uint32(words, IR_SEQ) == seq > 0  # the verdict registers are that trigger's inspection
        assert collector.wait_for(lambda m: any(r["seq"] == seq for r in results(collector)), 10)
        published = results(collector)
        [result] = [r for r in published if r["seq"] == seq]
        assert VERDICTS[words[IR_VERDICT]] == result["verdict"]
        assert words[IR_SCORE_X100] == min(round(result["score"] * 100), 0xFFFF)
        assert words[IR_SCORE_NORM_X100] == min(round(result["score_norm"] * 100), 0xFFFF)
        assert uint32(words, IR_PASS_COUNT) == sum(r["verdict"] == "pass" for r in published)
        assert uint32(words, IR_FAIL_COUNT) == sum(r["verdict"] == "fail" for r in published)
        assert plc.registers(holding=True) == words  # the same map over FC3 for PLCs that read only that
        ready, busy, last_pass, last_reject = plc.inputs()
        assert (ready, busy, last_pass, last_reject) == (True, False, result["verdict"] == "pass",
                                                         result["verdict"] != "pass")
    assert {r["verdict"] for r in results(collector)} == {"pass", "fail"}
    assert plc.client.read_coils(0, count=1, device_id=1).bits[0] is False  # the coil is taken, reads 0


def test_a_trigger_while_busy_is_answered_busy_on_the_registers_and_in_stats(station):
    daemon, collector, plc = station
    plc.trigger()
    assert wait_until(lambda: plc.registers()[IR_BUSY] == 1, 5)  # DELAY_MS of waiting for the part
    assert plc.inputs()[1] is True
    plc.trigger()  # while busy
    words = plc.wait_answers(2)
    assert uint32(words, IR_BUSY_COUNT) == 1
    assert words[IR_LAST_ANSWER] in (ANSWER_INSPECTED, 2)  # the busy answer comes first, the verdict after
    assert collector.wait_for(lambda m: len(results(collector)) == 1, 10)
    stats = lambda: [strict_json(p)["triggers"] for p in collector.payloads(f"{BASE}/stats")]
    assert collector.wait_for(lambda m: any(s.get("busy") == 1 and s.get("inspected") == 1 for s in stats()), 15)
    assert plc.registers()[IR_BUSY] == 0 and uint32(plc.registers(), IR_ANSWER_COUNT) == 2


def test_the_registers_are_read_only(station):
    _, _, plc = station
    assert plc.client.write_register(IR_VERDICT, 1, device_id=1).isError()
    assert plc.client.write_registers(IR_SEQ, [0, 9], device_id=1).isError()


def raw_write_single_coil(port: int, value: int) -> bytes:
    """FC5 as raw bytes, since a client library only sends the two legal values."""
    request = struct.pack(">HHHBBHH", 1, 0, 6, 1, 5, 0, value)  # MBAP header, then function, address, value
    with socket.create_connection(("127.0.0.1", port), timeout=5) as link:
        link.sendall(request)
        return link.recv(64)


def test_a_coil_write_of_anything_but_on_or_off_is_refused_and_triggers_nothing(station):
    daemon, collector, plc = station
    assert wait_until(lambda: plc.registers()[IR_READY] == 1, 10)
    for stray in (0x1234, 0x0001, 0xFFFF):
        reply = raw_write_single_coil(plc.port, stray)
        assert reply[7:9] == bytes([0x85, 0x03]), reply.hex()  # exception 3: illegal data value
    plc.trigger()  # 0xFF00 still triggers, once
    words = plc.wait_answers(1)
    time.sleep(0.5)  # room for a stray trigger's answer, had one been taken
    assert uint32(plc.registers(), IR_ANSWER_COUNT) == 1 and words[IR_LAST_ANSWER] == ANSWER_INSPECTED


def test_a_modbus_port_that_is_taken_stops_start_up_with_the_key(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, None, sample_folder(tmp_path, count=1), mqtt={"enabled": False},
                              io={"modbus": {"enabled": True, "port": port}})
        checked = run_cli("check-config", str(config))
        daemon = DaemonProcess(config)
        assert daemon.wait(60) == 78, daemon.log()[-3000:]
    assert f"io.modbus: cannot listen on 127.0.0.1:{port}" in daemon.log()
    assert checked.returncode == 78
    assert f"io.modbus: cannot listen on 127.0.0.1:{port}" in checked.stdout + checked.stderr


def test_ready_drops_while_the_camera_is_away(tmp_path, broker):
    camera = MjpegServer(fps=20.0)
    camera.start()
    port = free_port()
    config = write_config(tmp_path, broker.port, tmp_path, source={"kind": "stream", "url": camera.url,
                                                                   "reconnect_initial_s": 0.2},
                          trigger={"mode": "triggered"}, io={"modbus": {"enabled": True, "port": port}})
    daemon = DaemonProcess(config)
    try:
        assert daemon.wait_for_log("ready:", 60), daemon.log()[-3000:]
        plc = Plc(port)
        assert wait_until(lambda: plc.registers()[IR_READY] == 1 and camera.sent > 3, 15)
        camera.stop()  # the camera goes away: the source reconnects, the station cannot inspect
        assert wait_until(lambda: plc.registers()[IR_READY] == 0, 15), daemon.log()[-3000:]
        assert plc.inputs()[0] is False
        camera.start()  # back on the same port
        assert wait_until(lambda: plc.registers()[IR_READY] == 1, 30), daemon.log()[-3000:]
        plc.client.close()
    finally:
        camera.stop()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()[-3000:]
