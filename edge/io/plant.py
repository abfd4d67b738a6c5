"""What the plant sees of a station: the Modbus slave, the GPIO lines and the OPC UA server, kept up to date from
one place.

PlantIo hears the trigger desk (busy, answers), the station's verdicts (an inline sink: the registers, the OPC UA
variables and the pulse are set before the trigger's answer goes out, so a PLC that sees the answer reads its
verdict), the source's state (ready) and command replies (the threshold in force). With every interface disabled it
does nothing, and none of their libraries is imported.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from edge.config.errors import ConfigError
from edge.config.io import IoConfig
from edge.config.opcua import OpcuaConfig, check_opcua_password, resolve_opcua_password
from edge.io import IoError
from edge.io.triggers import ANSWER_CODES, BUSY, INSPECTED, NO_FRAME, NOT_INSPECTED, Answer, TriggerDesk
from edge.publish.sinks import VerdictEvent, VerdictSink
from edge.errors import StartupError
from edge.status import StationStatus

if TYPE_CHECKING:
    from edge.config.schema import Config
    from edge.core.inspector import Inspector

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

    def __init__(self, cfg: Config, triggers: TriggerDesk, status: StationStatus,
                 inspector: Callable[[], Inspector | None] = lambda: None) -> None:
        self.config, self.opcua_config, self.device_id = cfg.io, cfg.opcua, cfg.device_id
        self.triggers, self.status, self.inspector = triggers, status, inspector
        self.modbus = self.gpio = self.opcua = None
        self.sink = PlantSink(self)
        self._started = False
        self._source_away = False

    @property
    def outputs(self) -> list:
        return [output for output in (self.modbus, self.gpio, self.opcua) if output is not None]

    def start(self) -> None:
        """Open the enabled interfaces; StartupError naming the key when one cannot be had."""
        try:
            if self.config.modbus.enabled:
                from edge.io.modbus import ModbusSlave
                self.modbus = ModbusSlave(self.config.modbus, self.triggers.offer)
            if self.config.gpio.enabled:
                from edge.io.gpio import GpioLines
                self.gpio = GpioLines(self.config.gpio, self.triggers.offer)
            if self.opcua_config.enabled:
                self.opcua = self._start_opcua()
        except IoError as exc:
            self.close()
            raise StartupError(str(exc)) from None
        self.triggers.listeners.append(self)
        self._show_status()

    def _start_opcua(self):
        try:
            from edge.io.opcua import OpcuaServer, Station
        except ImportError as exc:
            raise IoError(f"opcua.enabled: the OPC UA library is missing ({exc}): install lineguard[edge]") from None
        password = resolve_opcua_password(self.opcua_config)
        problem = check_opcua_password(self.opcua_config, password)
        if problem is not None:
            raise IoError(problem)
        server = OpcuaServer(self.opcua_config, self.device_id, password,
                             Station(self.triggers.offer, partial(self.triggers.commands.on_command, origin="opcua"),
                                     self._threshold_problem))
        self.triggers.report.reply_listeners.append(self.replied)
        return server

    def _threshold_problem(self, value: float) -> str | None:
        inspector = self.inspector()
        if inspector is None:
            return "the station is not inspecting yet"
        return inspector.calibration.threshold_problem(value, inspector.bundle.name)

    def set_ready(self, started: bool) -> None:
        self._started = started
        self._show_model()
        self._show_status()

    def replied(self, command: str, ok: bool, reason: str, request_id: str | None) -> None:
        """A reply to a command from any interface: a threshold or reload may have changed what is in force."""
        if self.opcua is not None:
            self.opcua.command_replied(command, ok, reason, request_id)
            if ok and command in ("threshold", "threshold_reset", "reload"):
                self._show_model()

    def source_changed(self, state: str) -> None:
        self._source_away = state in SOURCE_AWAY
        self._show_status()

    def close(self) -> None:
        self._started = False
        self._show_status()
        for output in self.outputs:
            output.close()
        self.modbus = self.gpio = self.opcua = None

    # --- from the trigger desk (any thread) and the frame loop ---

    def engaged(self, busy: bool) -> None:
        self._show_status()

    def answered(self, answer: Answer) -> None:
        if self.modbus is not None:
            counts = self.triggers.stats()
            answers = counts[INSPECTED] + counts[BUSY] + counts[NO_FRAME] + counts[NOT_INSPECTED]
            self.modbus.update(answer_count=split(answers), busy_count=split(counts[BUSY]),
                               last_answer=ANSWER_CODES[answer.outcome], last_answer_seq=split(answer.seq or 0))
        if self.opcua is not None:
            counts = self.triggers.stats()
            self.opcua.update(AnsweredCount=sum(counts[name] for name in ANSWER_CODES), BusyCount=counts[BUSY],
                              LastAnswer=answer.outcome, LastAnswerSeq=answer.seq or 0)
            self.opcua.answered(answer)
        if self.gpio is not None and answer.outcome not in (INSPECTED, BUSY):
            self.gpio.pulse(passed=False)  # fail closed: a triggered part that was not judged is rejected

    def show_verdict(self, event: VerdictEvent) -> None:
        verdict, counters = event.result.verdict, self.status.counters
        if self.modbus is not None:
            self.modbus.update(verdict=VERDICT_CODES.get(verdict, 0), score_x100=clamp16(event.result.score * 100),
                               score_norm_x100=clamp16(event.result.score_norm * 100), seq=split(event.seq),
                               pass_count=split(counters.passed), fail_count=split(counters.failed))
        if self.opcua is not None:
            from edge.io.opcua_nodes import verdict_values
            self.opcua.update(CurrentThreshold=float(event.result.threshold),
                              **verdict_values(event.seq, event.message, event.result, counters))
        if self.gpio is not None:
            self.gpio.pulse(passed=verdict == "pass")  # unscorable is rejected: fail closed

    def _show_model(self) -> None:
        inspector = self.inspector()
        if self.opcua is not None and inspector is not None:
            self.opcua.update(CurrentThreshold=float(inspector.threshold), Model=inspector.bundle.name)

    def _show_status(self) -> None:
        ready, busy = self._started and not self._source_away, self.triggers.busy
        if self.modbus is not None:
            self.modbus.update(ready=int(ready), busy=int(busy))
        if self.opcua is not None:
            status = self.status
            self.opcua.update(Ready=ready, Busy=busy, State=status.source_state, StateReason=status.source_detail)
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
    return problems


def preflight_opcua(config: OpcuaConfig) -> list[str]:
    """What would stop the OPC UA server from starting: its password, its certificate and key files, its port."""
    if not config.enabled:
        return []
    try:
        problem = check_opcua_password(config, resolve_opcua_password(config))
    except ConfigError as exc:
        problem = str(exc)
    problems = [problem] if problem else []
    try:
        from edge.io.opcua import load_credentials
    except ImportError as exc:
        return [*problems, f"opcua.enabled: the OPC UA library is missing ({exc}): install lineguard[edge]"]
    try:
        load_credentials(config)
    except IoError as exc:
        problems.append(str(exc))
    return problems
