"""The template for a new output (a PLC, a database, a message queue ...): copy this file, rename the class and
its ``name``, and add one line to OUTPUTS in edge/publish/outputs.py::

    "fail-log": example_sink.build,

``build`` gets the running config (read it per verdict: a reload applies at once), the broker link and the
evidence store, and returns the sink, or None when this station does not want the output. This one is not in
OUTPUTS: it is a template. A sink can also be passed as it is to edge.daemon.Daemon(..., sinks=[...]).
"""
from __future__ import annotations

import logging

from edge.publish.outputs import OutputParts
from edge.publish.sinks import VerdictEvent, VerdictSink

logger = logging.getLogger(__name__)


class FailLogSink(VerdictSink):
    """Logs each failed part with its largest region. Runs on its own thread: it may block without harm."""

    name = "fail-log"

    def wants(self, event: VerdictEvent) -> bool:
        return event.failed  # runs in the frame loop: keep it cheap

    def on_verdict(self, event: VerdictEvent) -> None:
        regions = event.result.regions  # event.message is the result message as published, event.payload its bytes
        logger.info("seq %d %s failed (score %.4g)%s", event.seq, event.image_name, event.result.score,
                    f", largest region at {regions[0]['x']},{regions[0]['y']}" if regions else "")

    def on_delivered(self, seqs: list[int], acked_s: float) -> None:
        logger.debug("%d verdict(s) acknowledged by the broker", len(seqs))


def build(parts: OutputParts) -> VerdictSink | None:
    """The sink for this station, or None when it does not want the output (e.g. a setting of the config)."""
    return FailLogSink()
