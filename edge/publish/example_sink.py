"""A minimal sink to copy when adding an output (a web page, a PLC, Prometheus ...).

It is not switched on anywhere: to use a sink, create it in edge/publish/outputs.py:build_sinks
(usually behind a config section of its own) or pass it to edge.daemon.Daemon(..., sinks=[...]).
"""
from __future__ import annotations

import logging

from edge.publish.sinks import VerdictEvent, VerdictSink

logger = logging.getLogger(__name__)


class FailLogSink(VerdictSink):
    """Logs each failed part with its largest region. Runs on its own thread: it may block without harm."""

    name = "fail-log"

    def wants(self, event: VerdictEvent) -> bool:
        return event.failed  # runs in the frame loop: keep it cheap

    def on_verdict(self, event: VerdictEvent) -> None:
        regions = event.result.regions
        logger.info("seq %d %s failed (score %.4g)%s", event.seq, event.image_name, event.result.score,
                    f", largest region at {regions[0]['x']},{regions[0]['y']}" if regions else "")

    def on_delivered(self, seqs: list[int], acked_s: float) -> None:
        logger.debug("%d verdict(s) acknowledged by the broker", len(seqs))
