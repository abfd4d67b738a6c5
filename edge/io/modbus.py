"""A Modbus TCP slave (pymodbus) for a PLC: a trigger coil, and the station's status and last verdict to read.

The register map is in README.md ("For controls engineers"); the addresses below are it. Every read is served
from one snapshot taken under a lock, so the registers of one read always belong to the same inspection. The
server runs its asyncio loop on a thread of its own; the main loop only updates the snapshot.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.bit_message import WriteSingleCoilRequest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.config.io import ModbusConfig
from edge.io import IoError
from edge.io.triggers import Trigger

logger = logging.getLogger("lineguard")

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0

# Coils (FC1 read, FC5/FC15 write)
COIL_TRIGGER = 0  # write 1: one trigger; reads back 0 once taken
# Discrete inputs (FC2)
DI_READY, DI_BUSY, DI_LAST_PASS, DI_LAST_REJECT = 0, 1, 2, 3
# Input registers (FC4), also readable as holding registers (FC3, read-only): 16-bit words, 32-bit values
# high word first.
IR_VERDICT = 0  # last verdict: 0 none yet, 1 pass, 2 fail, 3 unscorable
IR_SCORE_X100 = 1  # last score x 100, rounded, clamped to 0..65535
IR_SCORE_NORM_X100 = 2  # last score_norm x 100 (50 = at the threshold), clamped to 0..65535
IR_SEQ = 3  # (32-bit) seq of the last verdict
IR_PASS_COUNT = 5  # (32-bit) pass verdicts since start
IR_FAIL_COUNT = 7  # (32-bit) fail verdicts since start
IR_BUSY_COUNT = 9  # (32-bit) triggers answered busy since start, from any interface
IR_ANSWER_COUNT = 11  # (32-bit) triggers answered since start (any answer, any interface)
IR_LAST_ANSWER = 13  # answer to the last trigger: 0 none, 1 inspected, 2 busy, 3 no frame in time, 4 not inspected
IR_LAST_ANSWER_SEQ = 14  # (32-bit) seq the last trigger was inspected as; 0 when it was not
IR_READY = 16  # 1 while the station is inspecting (started, source not away)
IR_BUSY = 17  # 1 from an accepted trigger until its answer
REGISTER_COUNT = 18
REGISTER_ADDRESSES = {
    "verdict": IR_VERDICT, "score_x100": IR_SCORE_X100, "score_norm_x100": IR_SCORE_NORM_X100, "seq": IR_SEQ,
    "pass_count": IR_PASS_COUNT, "fail_count": IR_FAIL_COUNT, "busy_count": IR_BUSY_COUNT,
    "answer_count": IR_ANSWER_COUNT, "last_answer": IR_LAST_ANSWER, "last_answer_seq": IR_LAST_ANSWER_SEQ,
    "ready": IR_READY, "busy": IR_BUSY,
}

# Function codes as pymodbus hands them to the access hook.
READ_DISCRETE_INPUTS, READ_HOLDING, READ_INPUT = 2, 3, 4
WRITE_COILS = (5, 15)


COIL_ON, COIL_OFF = 0xFF00, 0x0000  # the only values a single-coil write may carry


class StrictWriteSingleCoil(WriteSingleCoilRequest):
    """FC5 as the Modbus spec has it: any value but 0xFF00 or 0x0000 is refused (exception 3), not taken as 1.

    pymodbus reads any non-zero value as ON, so a PLC writing a stray word to the coil would start an inspection.
    """

    raw_value = COIL_OFF

    def decode(self, data: bytes) -> None:
        super().decode(data)
        self.raw_value = int.from_bytes(data[2:4], "big")

    async def datastore_update(self, context, device_id: int):  # noqa: ANN001 - pymodbus's own signature
        if self.raw_value not in (COIL_ON, COIL_OFF):
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
        return await super().datastore_update(context, device_id)


class ModbusSlave:
    """Serves the register map on config.host:config.port; ``on_trigger`` gets each trigger coil write."""

    def __init__(self, config: ModbusConfig, on_trigger: Callable[[Trigger], bool]) -> None:
        self.config, self.on_trigger = config, on_trigger
        self._lock = threading.Lock()
        self._words = [0] * REGISTER_COUNT
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._listening = threading.Event()
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._serve, name="modbus", daemon=True)
        self._thread.start()
        if not self._listening.wait(START_TIMEOUT_S) or self._failure:
            self.close()
            raise IoError(f"io.modbus: cannot listen on {config.host}:{config.port}: "
                          f"{self._failure or 'no answer in time'}")
        logger.info("modbus: listening on %s:%d", config.host, config.port)

    # --- what the station shows (main loop and trigger threads) ---

    def update(self, **words: int | list[int]) -> None:
        """Set registers by name (REGISTER_ADDRESSES; a list fills consecutive words), all in one step."""
        with self._lock:
            for name, value in words.items():
                address = REGISTER_ADDRESSES[name]
                values = value if isinstance(value, list) else [value]
                self._words[address:address + len(values)] = values

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self._words)

    def close(self) -> None:
        if self._server is not None and self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(STOP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - stopping anyway; the thread is a daemon
                logger.exception("modbus: server did not stop cleanly")
        self._thread.join(STOP_TIMEOUT_S)

    # --- the server thread ---

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except Exception as exc:  # noqa: BLE001 - reported to start-up, which refuses to run without it
            self._failure = str(exc) or type(exc).__name__
            self._listening.set()
        finally:
            self._loop.close()

    async def _run(self) -> None:
        self._server = ModbusTcpServer(self._device(), address=(self.config.host, self.config.port),
                                       custom_pdu=[StrictWriteSingleCoil])
        try:
            await self._server.serve_forever(background=True)  # returns once listening
        except RuntimeError:
            raise OSError("the port is in use, or the address is not one of this machine's") from None
        self._listening.set()
        await self._server.serving

    def _device(self) -> SimDevice:
        bits = lambda readonly: [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=readonly)]
        words = [SimData(0, count=REGISTER_COUNT, values=0, datatype=DataType.REGISTERS, readonly=True)]
        # id 0: answer whatever unit id the PLC addresses
        return SimDevice(0, simdata=(bits(False), bits(True), list(words), list(words)), action=self._access)

    async def _access(self, function_code: int, start: int, address: int, count: int, registers: list[int],
                      values: list | None) -> None:
        """pymodbus calls this before each read or write: fill reads from the snapshot, act on a trigger write."""
        if values is not None and function_code in WRITE_COILS:
            writes_trigger = address <= COIL_TRIGGER < address + len(values)
            if writes_trigger and values[COIL_TRIGGER - address]:
                self.on_trigger(Trigger("modbus", time.monotonic()))
                values[COIL_TRIGGER - address] = False  # taken: the coil reads back 0
        elif function_code in (READ_INPUT, READ_HOLDING):
            registers[:] = self.snapshot()
        elif function_code == READ_DISCRETE_INPUTS:
            words = self.snapshot()
            last = words[IR_VERDICT]
            flags = {DI_READY: words[IR_READY], DI_BUSY: words[IR_BUSY], DI_LAST_PASS: last == 1,
                     DI_LAST_REJECT: last in (2, 3)}
            registers[0] = sum(1 << bit for bit, on in flags.items() if on)
        return None
