"""Triggers from every interface (MQTT cmd/trigger, the Modbus trigger coil, the GPIO trigger pin, the OPC UA Trigger
method) and their answers.

A trigger is stamped with time.monotonic() where it arrives. The station takes one trigger at a time: from the
moment one is accepted until it is answered, the station is busy, and any other trigger is counted and answered
``busy`` at once on its own interface (and on the busy counters of all of them); none is dropped unanswered.

An accepted trigger inspects the first frame captured at or after its time + trigger.delay_ms (frame_after):
older buffered frames are skipped and counted, and when none comes within trigger.timeout_s the answer says so.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from edge.capture.base import Frame, FrameSource
from edge.commands import Command
from edge.log_limit import LogLimit, held_back

logger = logging.getLogger("lineguard")

# Answers to a trigger, as the Modbus "last trigger answer" register gives them (README: register map).
INSPECTED, BUSY, NO_FRAME, NOT_INSPECTED = "inspected", "busy", "no_frame", "not_inspected"
ANSWER_CODES = {INSPECTED: 1, BUSY: 2, NO_FRAME: 3, NOT_INSPECTED: 4}
ORIGINS = ("mqtt", "modbus", "gpio", "opcua")
BUSY_LOG_EVERY_S = 10.0  # a PLC hammering a busy station must not flood the journal: one line per interval


@dataclass(frozen=True)
class Trigger:
    """One trigger: where it came from and when (time.monotonic()). part_id/request_id come with MQTT ones."""

    origin: str
    at_s: float
    part_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Answer:
    """What became of a trigger; seq is the verdict's when it was inspected."""

    trigger: Trigger
    outcome: str
    seq: int | None = None
    reason: str = ""


def frame_after(source: FrameSource, trigger: Trigger, delay_s: float, timeout_s: float,
                stop: threading.Event) -> tuple[Frame | None, int]:
    """The first frame captured at or after trigger time + delay_s, waiting up to timeout_s beyond that;
    with the number of older frames skipped. None when none came in time (or on stop, or a replay's end)."""
    not_before_s = trigger.at_s + delay_s
    deadline_s = not_before_s + timeout_s
    # Replay frames are stamped when read, so read none early; a live buffer may still hold an older frame.
    early_s = not_before_s - time.monotonic()
    if early_s > 0 and stop.wait(early_s):
        return None, 0
    skipped = 0
    while (left_s := deadline_s - time.monotonic()) > 0 and not stop.is_set():
        frame = source.read(left_s)
        if frame is None:
            if source.exhausted:
                break
            continue
        if frame.arrival_s >= not_before_s:
            return frame, skipped
        skipped += 1
    return None, skipped


class TriggerDesk:
    """Takes triggers from any thread, one at a time, and answers each exactly once.

    ``commands`` is the main loop's CommandQueue: an accepted trigger joins it as a "trigger" command, so it
    keeps its place among threshold and reload commands. ``report`` answers MQTT triggers (edge.publish.reporter);
    ``listeners`` (the plant IO, edge.io.plant) hear every answer, whatever its origin.
    """

    def __init__(self, commands, report) -> None:
        self.commands, self.report = commands, report
        self.listeners: list = []
        self._lock = threading.Lock()
        self._engaged = False
        self.counts = {"received": 0, INSPECTED: 0, BUSY: 0, NO_FRAME: 0, NOT_INSPECTED: 0, "stale_skipped": 0}
        self._busy_log = LogLimit(BUSY_LOG_EVERY_S)
        commands.on_trigger = self.offer  # MQTT triggers come here from the command queue

    @property
    def busy(self) -> bool:
        return self._engaged

    def offer(self, trigger: Trigger) -> bool:
        """Accept a trigger (queued for the main loop) or answer it busy at once. Any thread."""
        with self._lock:
            self.counts["received"] += 1
            accepted = not self._engaged
            self._engaged = True
        if accepted and self.commands.put(Command("trigger", trigger)):
            self._tell("engaged", True)
            return True
        if accepted:  # the command queue is full of other commands: the station is busy all the same
            self._release()
        with self._lock:
            self.counts[BUSY] += 1
            busy_so_far = self.counts[BUSY]
        self._answer(Answer(trigger, BUSY, reason=f"busy: still answering an earlier trigger "
                                                 f"({busy_so_far} busy trigger(s) so far)"))
        return False

    def answer(self, trigger: Trigger, frame: Frame | None, seq: int | None, skipped: int = 0) -> None:
        """The main loop's answer to an accepted trigger, after its inspection (or none); frees the station."""
        if frame is None:
            answer = Answer(trigger, NO_FRAME, reason="no frame captured after the trigger within "
                            "trigger.timeout_s" + (f" ({skipped} older frame(s) skipped)" if skipped else ""))
        elif seq is None:
            answer = Answer(trigger, NOT_INSPECTED, reason=f"frame {frame.name} could not be inspected")
        else:
            answer = Answer(trigger, INSPECTED, seq, f"inspected as seq {seq}")
        with self._lock:
            self.counts[answer.outcome] += 1
            self.counts["stale_skipped"] += skipped
        if skipped:
            logger.debug("trigger from %s: %d frame(s) older than the trigger skipped", trigger.origin, skipped)
        self._answer(answer)
        self._release()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _release(self) -> None:
        with self._lock:
            self._engaged = False
        self._tell("engaged", False)

    def _answer(self, answer: Answer) -> None:
        if answer.outcome == BUSY:
            self._log_busy(answer)
        elif answer.outcome != INSPECTED:
            logger.warning("trigger from %s: %s", answer.trigger.origin, answer.reason)
        if answer.trigger.origin == "mqtt":
            self.report.trigger_answer(answer)
        self._tell("answered", answer)

    def _log_busy(self, answer: Answer) -> None:
        if events := self._busy_log.due():
            logger.warning("trigger from %s: %s%s", answer.trigger.origin, answer.reason,
                           held_back(events, "answered busy, from any origin,"))

    def _tell(self, event: str, value) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, event)(value)
            except Exception:  # an IO fault must not stop the answers on the other interfaces
                logger.exception("trigger %s: a listener failed", event)
