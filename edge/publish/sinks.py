"""Where verdicts fan out to once they are durable: one interface for every output.

The outbox (edge.publish.recorder) is the verdict's durable record and is written in the frame loop. Everything
else that wants verdicts (live MQTT heatmap, evidence files, and tomorrow a web page or a PLC) is a
`VerdictSink`. Each sink runs on its own thread behind a bounded queue: a slow sink loses its own events
(counted in stats), a failing one logs and carries on, and neither can stall inspection.

To add an output, copy edge/publish/example_sink.py (a VerdictSink and its build function) and add one line to
OUTPUTS in edge/publish/outputs.py.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.core.overlay import render_frame_overlay, render_overlay

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_EVENTS = 64
CLOSE_TIMEOUT_S = 10.0  # a clean stop waits this long per sink for queued events to be handled


@dataclass
class VerdictEvent:
    """One durable verdict, as every sink sees it."""

    seq: int
    image: np.ndarray  # the frame as captured (gray, or BGR from a camera)
    image_name: str
    part_id: str | None
    result: Any  # edge.core.inspector.Inspection
    payload: bytes  # the result message, exactly as published
    message: dict[str, Any]  # the same message as built (edge.publish.messages.result_payload); read, never change
    alert: bool
    arrival_s: float  # time.monotonic() when the frame was captured
    recorded_s: float  # time.monotonic() when the verdict was durable in the outbox
    spec: Any  # the model's PreprocessSpec, for the overlay
    pixel_threshold: float
    frame_roi: tuple[int, int, int, int] | None = None  # the device's crop (inference.roi), for the overlay
    bundle: Any = None  # the model's edge.core.bundle.Bundle that judged it
    _overlay: np.ndarray | None = field(default=None, repr=False)
    _overlay_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def failed(self) -> bool:
        return self.result.verdict == "fail"

    def overlay(self) -> np.ndarray:
        """The frame blended with its heatmap, rendered once however many sinks ask."""
        with self._overlay_lock:
            if self._overlay is None:
                self._overlay = render_overlay(self.image, self.result.heat, self.spec, self.pixel_threshold,
                                               self.frame_roi)
            return self._overlay

    def frame_overlay(self) -> np.ndarray:
        """The heatmap on the whole frame, in the frame's geometry (the Review tab's evidence)."""
        return render_frame_overlay(self.image, self.result.heat, self.spec, self.pixel_threshold, self.frame_roi)


class VerdictSink:
    """An output for verdicts. Methods run on the sink's own thread; override what you need."""

    name = "sink"
    queue_events = DEFAULT_QUEUE_EVENTS
    # True only for sinks that do a few microseconds of work and never block (a counter, a timestamp):
    # they run in the frame loop itself and are spared a thread wake-up per frame.
    inline = False

    def wants(self, event: VerdictEvent) -> bool:
        """Cheap filter, run in the frame loop: False skips the queue altogether."""
        return True

    def on_start(self) -> None:
        """Start-up is over: the station inspects from now on."""

    def on_verdict(self, event: VerdictEvent) -> None:
        """Handle one verdict."""

    def on_delivered(self, seqs: list[int], acked_s: float) -> None:
        """The broker acknowledged these verdicts' result messages; they left the outbox."""

    def durable(self, message: dict[str, Any], alert: bool) -> list[tuple[str, bytes, int]]:
        """Messages (full topic, payload, qos) stored in the outbox with the verdict, in its transaction, for an
        output that must lose none (the Sparkplug node). Runs in the frame loop before the verdict is recorded and
        before :meth:`wants`, whatever it says: keep it cheap. Most outputs store none."""
        return []

    def close(self) -> None:
        """Release what the sink holds; called once, after its last event."""

    def stats(self) -> dict[str, Any] | None:
        """Its own section of the stats payload, under its name (from any thread), or None for none."""
        return None


class _SinkWorker:
    """One sink's queue and thread."""

    def __init__(self, sink: VerdictSink) -> None:
        self.sink = sink
        self.dropped = 0
        self.errors = 0
        self._queue: queue.Queue = queue.Queue(maxsize=sink.queue_events)
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self._thread.start()

    def submit(self, method: str, *args: Any) -> None:
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("sink %s is behind; %d event(s) dropped so far", self.sink.name, self.dropped)

    def close(self, timeout_s: float) -> None:
        deadline_s = time.monotonic() + timeout_s
        while True:  # the stop marker must get in even if the queue is full
            try:
                self._queue.put((None, ()), timeout=max(0.01, deadline_s - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline_s:
                    logger.warning("sink %s did not finish its queued events in time", self.sink.name)
                    return
        self._thread.join(max(0.0, deadline_s - time.monotonic()))

    def _run(self) -> None:
        while True:
            method, args = self._queue.get()
            if method is None:
                break
            try:
                getattr(self.sink, method)(*args)
            except Exception:  # a sink's bug must not end its thread, nor reach inspection
                self.errors += 1
                logger.exception("sink %s failed on %s", self.sink.name, method)
        try:
            self.sink.close()
        except Exception:
            logger.exception("sink %s failed to close", self.sink.name)


class _InlineWorker:
    """An inline sink, called in the caller's thread; its errors are counted and logged like a threaded one's."""

    def __init__(self, sink: VerdictSink) -> None:
        self.sink = sink
        self.dropped = 0
        self.errors = 0

    def submit(self, method: str, *args: Any) -> None:
        try:
            getattr(self.sink, method)(*args)
        except Exception:
            self.errors += 1
            logger.exception("sink %s failed on %s", self.sink.name, method)

    def close(self, timeout_s: float) -> None:
        self.submit("close")


class FanOut:
    """Hands each verdict to every sink that wants it, without waiting for any of them."""

    def __init__(self, sinks: list[VerdictSink]) -> None:
        self._workers = [(_InlineWorker if sink.inline else _SinkWorker)(sink) for sink in sinks]
        # Only sinks that want acknowledgements get them, so they never crowd verdicts out of a queue.
        self._ack_workers = [w for w in self._workers if type(w.sink).on_delivered is not VerdictSink.on_delivered]
        self._durable_workers = [w for w in self._workers if type(w.sink).durable is not VerdictSink.durable]

    def started(self) -> None:
        for worker in self._workers:
            worker.submit("on_start")

    def durable(self, message: dict[str, Any], alert: bool) -> list[tuple[str, bytes, int]]:
        """What the sinks store with this verdict (VerdictSink.durable); a sink that fails stores nothing for it."""
        kept = []
        for worker in self._durable_workers:
            try:
                kept += worker.sink.durable(message, alert)
            except Exception:
                worker.errors += 1
                logger.exception("sink %s failed on durable", worker.sink.name)
        return kept

    def verdict(self, event: VerdictEvent) -> None:
        for worker in self._workers:
            if worker.sink.wants(event):
                worker.submit("on_verdict", event)

    def delivered(self, seqs: list[int]) -> None:
        """Called from the outbox sender's thread."""
        acked_s = time.monotonic()
        for worker in self._ack_workers:
            worker.submit("on_delivered", seqs, acked_s)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        for worker in reversed(self._workers):  # in reverse order of start, like the rest of shutdown
            worker.close(timeout_s)

    def stats(self) -> dict[str, dict[str, int]]:
        return {w.sink.name: {"dropped": w.dropped, "errors": w.errors} for w in self._workers}

    def find(self, name: str) -> VerdictSink | None:
        """The sink of that name, or None."""
        return next((w.sink for w in self._workers if w.sink.name == name), None)

    def sections(self) -> dict[str, dict[str, Any]]:
        """The sinks' own sections of the stats payload (VerdictSink.stats), by sink name."""
        return {w.sink.name: section for w in self._workers if (section := w.sink.stats()) is not None}
