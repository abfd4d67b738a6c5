"""What the plant sees of a station: the Modbus slave and the GPIO lines, kept up to date from one place.

PlantIo hears the trigger desk (busy, answers), the station's verdicts (an inline sink: the registers and the
pulse are set before the trigger's answer goes out, so a PLC that sees the answer reads its verdict) and the
source's state (ready). With both interfaces disabled it does nothing, and neither library is imported.
"""
from __future__ import annotations

import logging
import socket

from edge.config.io import IoConfig
from edge.io import IoError
from edge.io.triggers import ANSWER_CODES, BUSY, INSPECTED, NO_FRAME, NOT_INSPECTED, Answer, TriggerDesk
from edge.publish.sinks import VerdictEvent, VerdictSink
from edge.errors import StartupError
from edge.status import StationStatus

logger = logging.getLogger("lineguard")

SOURCE_AWAY = ("reconnecting", "ended")
UINT16_MAX, UINT32_MAX = 0xFFFF, 0xFFFFFFFF
VERDICT_CODES = {"pass": 1, "fail": 2, "unscorable": 3}  # the Modbus verdict register; 0 = none yet


class PlantSink(VerdictSink):
    """Verdicts to the plant IO, in the frame loop: a few register writes and a pulse started on its own thread."""

    name = "plant-io"
    inline = True

    def __init__(self, plant: PlantIo) -> None:
        self.plant = plant

    def wants(self, event: VerdictEvent) -> bool:
        return bool(self.plant.outputs)

    def on_start(self) -> None:
        self.plant.set_ready(True)  # start-up is over: the station inspects from now on

    def on_verdict(self, event: VerdictEvent) -> None:
        self.plant.show_verdict(event)

    def close(self) -> None:
        self.plant.close()  # the station stops: ready goes low, the port and the lines are released


class PlantIo:
    """The configured plant interfaces; a listener of the trigger desk."""

    def __init__(self, config: IoConfig, triggers: TriggerDesk, status: StationStatus) -> None:
        self.config, self.triggers, self.status = config, triggers, status
        self.modbus = self.gpio = None
        self.sink = PlantSink(self)
        self._started = False
        self._source_away = False

    @property
    def outputs(self) -> list:
        return [output for output in (self.modbus, self.gpio) if output is not None]

    def start(self) -> None:
        """Open the enabled interfaces; StartupError naming the key when one cannot be had."""
        try:
            if self.config.modbus.enabled:
                from edge.io.modbus import ModbusSlave
                self.modbus = ModbusSlave(self.config.modbus, self.triggers.offer)
            if self.config.gpio.enabled:
                from edge.io.gpio import GpioLines
                self.gpio = GpioLines(self.config.gpio, self.triggers.offer)
        except IoError as exc:
            self.close()
            raise StartupError(str(exc)) from None
        self.triggers.listeners.append(self)
        self._show_status()

    def set_ready(self, started: bool) -> None:
        self._started = started
        self._show_status()

    def source_changed(self, state: str) -> None:
        self._source_away = state in SOURCE_AWAY
        self._show_status()

    def close(self) -> None:
        self._started = False
        self._show_status()
        for output in self.outputs:
            output.close()
        self.modbus = self.gpio = None

    # --- from the trigger desk (any thread) and the frame loop ---

    def engaged(self, busy: bool) -> None:
        self._show_status()

    def answered(self, answer: Answer) -> None:
        if self.modbus is not None:
            counts = self.triggers.stats()
            answers = counts[INSPECTED] + counts[BUSY] + counts[NO_FRAME] + counts[NOT_INSPECTED]
            self.modbus.update(answer_count=split(answers), busy_count=split(counts[BUSY]),
                               last_answer=ANSWER_CODES[answer.outcome], last_answer_seq=split(answer.seq or 0))
        if self.gpio is not None and answer.outcome not in (INSPECTED, BUSY):
            self.gpio.pulse(passed=False)  # fail closed: a triggered part that was not judged is rejected

    def show_verdict(self, event: VerdictEvent) -> None:
        verdict, counters = event.result.verdict, self.status.counters
        if self.modbus is not None:
            self.modbus.update(verdict=VERDICT_CODES.get(verdict, 0), score_x100=clamp16(event.result.score * 100),
                               score_norm_x100=clamp16(event.result.score_norm * 100), seq=split(event.seq),
                               pass_count=split(counters.passed), fail_count=split(counters.failed))
        if self.gpio is not None:
            self.gpio.pulse(passed=verdict == "pass")  # unscorable is rejected: fail closed

    def _show_status(self) -> None:
        ready, busy = self._started and not self._source_away, self.triggers.busy
        if self.modbus is not None:
            self.modbus.update(ready=int(ready), busy=int(busy))
        if self.gpio is not None:
            self.gpio.show_status(ready, busy)


def split(value: int) -> list[int]:
    """A 32-bit count as two registers, high word first (saturating)."""
    value = min(max(int(value), 0), UINT32_MAX)
    return [value >> 16, value & UINT16_MAX]


def clamp16(value: float) -> int:
    return min(max(round(value), 0), UINT16_MAX)


def preflight_io(config: IoConfig) -> list[str]:
    """What would stop the plant IO from opening, found without keeping anything: the GPIO pin library loads,
    the Modbus address can be bound. One line per problem, naming the key."""
    problems = []
    if config.gpio.enabled:
        from edge.io.gpio import load_pin_factory
        try:
            load_pin_factory(config.gpio.pin_factory).close()
        except IoError as exc:
            problems.append(str(exc))
    if config.modbus.enabled:
        modbus = config.modbus
        try:
            with socket.create_server((modbus.host, modbus.port)):
                pass
        except OSError as exc:
            problems.append(f"io.modbus: cannot listen on {modbus.host}:{modbus.port}: {exc.strerror or exc}")
    return problems
