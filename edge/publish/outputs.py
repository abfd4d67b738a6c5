"""The sinks a station runs, assembled here and only here: the outputs registered in OUTPUTS (evidence files, the
live MQTT heatmap and the Sparkplug B edge node today), then the station's own (plant IO, the station page) and any
a caller adds.

To add an output: a module with its VerdictSink and a build function (start from edge/publish/example_sink.py),
and one line in OUTPUTS.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from edge.core.preprocess import to_uint8
from edge.drift import DriftSink, alert_publisher
from edge.shadow import ShadowSink
from edge.publish import messages
from edge.publish.evidence import EvidenceStore
from edge.publish.history import History, HistorySink
from edge.publish.sinks import VerdictEvent, VerdictSink
from edge.publish.sparkplug import node as sparkplug

if TYPE_CHECKING:
    from edge.config.schema import Config
    from edge.publish.mqtt import MqttLink
    from edge.publish.outbox import Outbox
    from edge.status import StationStatus

HEATMAP_QUEUE_EVENTS = 8  # a live view: when the broker link is slow, older pictures are not worth sending
EVIDENCE_QUEUE_EVENTS = 64  # failed frames whose files may wait for a slow disk

Policy = Callable[[], str]  # "always", "fail" or "never"; read per frame, so a reload applies at once


def _wanted(policy: str, event: VerdictEvent) -> bool:
    return policy == "always" or (policy == "fail" and event.failed)


class HeatmapSink(VerdictSink):
    """Publishes the overlay JPEG on <base>/heatmap at QoS 0, for live views; over MQTT 5 it names its result."""

    name = "heatmap"
    queue_events = HEATMAP_QUEUE_EVENTS

    def __init__(self, link, policy: Policy) -> None:
        self.link = link
        self.policy = policy

    def wants(self, event: VerdictEvent) -> bool:
        return _wanted(self.policy(), event)

    def on_verdict(self, event: VerdictEvent) -> None:
        ok, jpeg = cv2.imencode(".jpg", event.overlay())
        if ok:
            self.link.publish(messages.HEATMAP, jpeg.tobytes(), qos=0,
                              user_properties=messages.heatmap_properties(event.message))


def evidence_stem(event: VerdictEvent) -> str:
    """<seq>-<image>: the name of a verdict's evidence files, without -heat and .jpg."""
    return f"{event.seq:09d}-{Path(event.image_name).stem}"


class EvidenceSink(VerdictSink):
    """Saves the frame and its heatmap under storage.dir/evidence as <seq>-<image>.jpg and -heat.jpg, both in the
    frame's geometry (edge.core.overlay.render_frame_overlay): the Review tab lays one over the other."""

    name = "evidence"
    queue_events = EVIDENCE_QUEUE_EVENTS

    def __init__(self, store: EvidenceStore, policy: Policy) -> None:
        self.store = store
        self.policy = policy

    def wants(self, event: VerdictEvent) -> bool:
        return _wanted(self.policy(), event)

    def on_verdict(self, event: VerdictEvent) -> None:
        self.store.save(evidence_stem(event), {"": to_uint8(event.image), "-heat": event.frame_overlay()})  # 8-bit JPEG


@dataclass(frozen=True)
class OutputParts:
    """What an output may build its sink from."""

    cfg: Callable[[], Config]  # the running config: read it per verdict, and a reload applies at once
    link: MqttLink | None  # the broker link; None when mqtt.enabled is false
    evidence: EvidenceStore  # storage.dir/evidence, with its quota
    outbox: Outbox | None = None  # the durable outbox, for an output that sends what it stores there itself
    status: StationStatus | None = None  # what the station is doing (the source's state)


Build = Callable[[OutputParts], "VerdictSink | None"]  # None: this station does not want the output


def build_evidence(parts: OutputParts) -> EvidenceSink:
    return EvidenceSink(parts.evidence, lambda: parts.cfg().storage.evidence)


def build_drift(parts: OutputParts) -> DriftSink:
    return DriftSink(lambda: parts.cfg().drift, alert_publisher(parts.cfg, parts.link))


def build_heatmap(parts: OutputParts) -> HeatmapSink | None:
    return HeatmapSink(parts.link, lambda: parts.cfg().mqtt.heatmap) if parts.link is not None else None


def build_history(parts: OutputParts) -> HistorySink | None:
    cfg = parts.cfg()
    if not cfg.history.enabled:
        return None
    history = History(cfg.storage.dir, cfg.history.retention_days * 86400.0, int(cfg.history.max_mb * 1e6),
                      int(cfg.storage.reserve_mb * 1e6))
    return HistorySink(history, lambda event: f"{evidence_stem(event)}.jpg"
                       if _wanted(parts.cfg().storage.evidence, event) else None)


# Every output a station may run, by name, in the order verdicts reach them: one line per output.
OUTPUTS: dict[str, Build] = {
    "evidence": build_evidence,
    "heatmap": build_heatmap,
    "sparkplug": sparkplug.build,
    "drift": build_drift,
    "shadow": lambda parts: ShadowSink(parts.cfg),
    "history": build_history,
}


def build_sinks(parts: OutputParts, *, plant: VerdictSink, page: Iterable[VerdictSink],
                extra: Iterable[VerdictSink] = ()) -> list[VerdictSink]:
    """Every sink a station runs, in the order each verdict reaches them: the registered outputs, the plant IO's,
    those a caller adds (benchmarks, embedding applications), then the station page's (inline, cheapest last)."""
    outputs = [sink for build in OUTPUTS.values() if (sink := build(parts)) is not None]
    return [*outputs, plant, *extra, *page]
