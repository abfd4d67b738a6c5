"""One frame's path after capture: inspect -> verdict -> durable record -> sinks, and what the station counts."""
from __future__ import annotations

import logging
import time
from collections import deque

from edge.config.schema import Config
from edge.core.inspector import Inspector
from edge.core.preprocess import ImageError
from edge.publish import messages
from edge.publish.recorder import VerdictRecorder
from edge.publish.sinks import FanOut, VerdictEvent
from edge.status import StationStatus

logger = logging.getLogger("lineguard")


class AlertDebounce:
    """Alert when at least n of the last m frames failed."""

    def __init__(self, n: int, m: int) -> None:
        self.n = n
        self.recent: deque[bool] = deque(maxlen=m)

    def update(self, failed: bool) -> bool:
        self.recent.append(failed)
        return failed and sum(self.recent) >= self.n


class Station:
    """Judges frames with the running config and model. Used by the main loop only."""

    def __init__(self, cfg: Config, inspector: Inspector, recorder: VerdictRecorder, fanout: FanOut,
                 status: StationStatus) -> None:
        self.cfg = cfg
        self.inspector = inspector
        self.recorder = recorder
        self.fanout = fanout
        self.status = status
        self.last_verdict: dict | None = None
        self.debounce = AlertDebounce(cfg.alerts.debounce_n, cfg.alerts.debounce_m)

    def switch_to(self, cfg: Config, inspector: Inspector) -> None:
        """Run a reloaded config and model from the next frame on."""
        if cfg.alerts != self.cfg.alerts:
            self.debounce = AlertDebounce(cfg.alerts.debounce_n, cfg.alerts.debounce_m)
        self.cfg, self.inspector = cfg, inspector

    def inspect(self, frame, part_id: str | None) -> int | None:
        """Inspect, record and fan out one frame; its verdict's seq, or None when it could not be inspected.
        Raises StorageError when its verdict cannot be recorded durably (edge.publish.recorder)."""
        try:
            result = self.inspector.inspect(frame.image, bgr=frame.image.ndim == 3)
        except ImageError as exc:
            self.status.counters.errors += 1
            logger.error("frame %s not inspected: %s", frame.name, exc)
            return None
        latency_ms = (time.monotonic() - frame.arrival_s) * 1000.0
        alert = self.debounce.update(result.verdict == "fail")
        seq = self.recorder.next_seq()
        bundle = self.inspector.bundle
        payload = messages.result_payload(seq, self.cfg.device_id, frame.name, part_id, result, bundle, latency_ms)
        # StorageError when the outbox cannot record it: then nothing is published or counted, and the station stops
        self.recorder.record(seq, [(messages.RESULT, payload.body, 1)]
                             + ([(messages.ALERT, payload.body, 1)] if alert else []),
                             self.fanout.durable(payload.data, alert))
        self.status.count(result.verdict, latency_ms, alert)
        self.last_verdict = {"seq": seq, "verdict": result.verdict, "score": result.score}  # for a trigger's reply
        logger.info("%s %-4s score %.4g (norm %.3f)%s", frame.name, result.verdict.upper(), result.score,
                    result.score_norm, f" part {part_id}" if part_id else "")
        self.fanout.verdict(VerdictEvent(
            seq=seq, image=frame.image, image_name=frame.name, part_id=part_id, result=result, payload=payload.body,
            message=payload.data, alert=alert, arrival_s=frame.arrival_s, recorded_s=time.monotonic(),
            spec=self.inspector.spec, pixel_threshold=self.inspector.calibration.pixel_threshold,
            frame_roi=self.inspector.frame_roi, bundle=bundle))
        return seq
