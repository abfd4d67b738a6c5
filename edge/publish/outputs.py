"""The sinks a station runs, chosen from its config: the live MQTT heatmap and evidence files today."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2

from edge.core.preprocess import to_uint8
from edge.publish import messages
from edge.publish.evidence import EvidenceStore
from edge.publish.sinks import VerdictEvent, VerdictSink

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
                              user_properties=messages.heatmap_properties(event.seq, event.payload))


class EvidenceSink(VerdictSink):
    """Saves the frame and its overlay under storage.dir/evidence as <seq>-<image>.jpg and -heat.jpg."""

    name = "evidence"
    queue_events = EVIDENCE_QUEUE_EVENTS

    def __init__(self, store: EvidenceStore, policy: Policy) -> None:
        self.store = store
        self.policy = policy

    def wants(self, event: VerdictEvent) -> bool:
        return _wanted(self.policy(), event)

    def on_verdict(self, event: VerdictEvent) -> None:
        stem = f"{event.seq:09d}-{Path(event.image_name).stem}"
        self.store.save(stem, {"": to_uint8(event.image), "-heat": event.overlay()})  # JPEG holds 8 bits


def build_sinks(cfg_of: Callable, link, evidence: EvidenceStore, extra: list[VerdictSink]) -> list[VerdictSink]:
    """The configured sinks, then any given by the caller (benchmarks, embedding applications)."""
    sinks: list[VerdictSink] = [EvidenceSink(evidence, lambda: cfg_of().storage.evidence)]
    if link is not None:
        sinks.append(HeatmapSink(link, lambda: cfg_of().mqtt.heatmap))
    return sinks + list(extra)
