"""The shadow model: a candidate bundle scores every frame the live model scores, and is only compared.

It runs as a sink (edge.publish.sinks), on its own thread: never in the frame loop, never publishing a verdict or
driving an output. When it falls behind it skips frames (at most MAX_PENDING wait for it) and counts them. Its
verdicts are compared with the live ones frame by frame; stats (and so the page and /metrics) show the agreement,
the disagreements and the last disagreeing seqs, and both fail rates with Wilson 95 % intervals.

A candidate comes from `shadow.model` (at start and after a reload that changes it, loaded on the shadow's
thread), or from `cmd/shadow` / `lineguard shadow PATH|--stop` (loaded between two frames, like a reload, so the
reply can say why a broken bundle is refused). It is judged by its own bundle's threshold, with the device's
ROI, ignore mask and polygons and quality gate.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config.schema import Config
from edge.core.bundle import BundleError
from edge.core.inspector import Inspector
from edge.core.preprocess import ImageError, read_image
from edge.core.runtime import ModelLoadError
from edge.publish.messages import model_ref
from edge.publish.sinks import VerdictEvent, VerdictSink
from edge.text import one_line

logger = logging.getLogger("lineguard")

SHADOW_NICE = 19  # the shadow's thread yields the CPU to the live path; under load it skips frames instead
MAX_PENDING = 2  # frames waiting for the shadow (or being scored); a newer one beyond them is skipped
KEPT_VERDICTS = 1000  # both verdicts of the latest frames compared, kept in memory
KEPT_DISAGREEMENTS = 20  # seqs of the latest disagreements shown
WILSON_Z = 1.959964  # 95 %


class ShadowRefused(ValueError):
    """A candidate that cannot be used; str() says why, in one line."""


def wilson(count: int, total: int) -> dict[str, float | None]:
    """The rate count/total and its Wilson score 95 % interval (None each without a frame)."""
    if total <= 0:
        return {"rate": None, "low": None, "high": None}
    p, z2 = count / total, WILSON_Z ** 2
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = WILSON_Z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return {"rate": round(p, 6), "low": round(max(0.0, centre - half), 6), "high": round(min(1.0, centre + half), 6)}


class Candidate:
    """One candidate model and what its comparison with the live model has found so far."""

    def __init__(self, inspector: Inspector, path: Path) -> None:
        self.inspector, self.path = inspector, path
        self.compared = self.agreements = self.disagreements = self.skipped = 0
        self.live_fails = self.shadow_fails = 0
        self.verdicts: deque[dict] = deque(maxlen=KEPT_VERDICTS)
        self.last_disagreements: deque[int] = deque(maxlen=KEPT_DISAGREEMENTS)
        self.lock = threading.Lock()
        self.checked = False  # its colour mode checked against the live model's (on its first frame)

    def record(self, seq: int, live, shadow) -> None:
        agree = live.verdict == shadow.verdict
        with self.lock:
            self.compared += 1
            self.agreements += agree
            self.disagreements += not agree
            self.live_fails += live.verdict == "fail"
            self.shadow_fails += shadow.verdict == "fail"
            self.verdicts.append({"seq": seq, "live": live.verdict, "shadow": shadow.verdict,
                                  "live_score": live.score, "shadow_score": shadow.score})
            if not agree:
                self.last_disagreements.append(seq)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            compared = self.compared
            return {
                "model": model_ref(self.inspector.bundle), "path": str(self.path),
                "threshold": self.inspector.threshold, "frames": compared, "agreements": self.agreements,
                "disagreements": self.disagreements, "skipped": self.skipped,
                "agreement": round(self.agreements / compared, 6) if compared else None,
                "last_disagreements": list(self.last_disagreements),
                "fail_rate": {"live": wilson(self.live_fails, compared), "shadow": wilson(self.shadow_fails, compared)},
            }


def load_candidate(path: Path, cfg: Config) -> Candidate:
    """A candidate bundle, verified and opened with the device's ROI and masks; ShadowRefused says why not."""
    try:
        mask = read_image(cfg.inference.ignore_mask, "gray") if cfg.inference.ignore_mask is not None else None
        inspector = Inspector(path, threads=1, roi=tuple(cfg.inference.roi) if cfg.inference.roi else None,
                              ignore_mask=mask, ignore_polygons=cfg.inference.ignore_polygons,
                              min_region_px=cfg.inference.min_region_px, quality_gate=cfg.inference.quality_gate)
    except (BundleError, ModelLoadError, ImageError, OSError) as exc:
        raise ShadowRefused(f"shadow model refused: {one_line(str(exc))}") from None
    return Candidate(inspector, path)


def colour_problem(candidate: Candidate, live_color: str, live_name: str) -> str | None:
    """A colour candidate beside a gray live model would see the gray frames the source was opened for."""
    if live_color == "gray" and candidate.inspector.spec.color != "gray":
        return (f"shadow model refused: {candidate.inspector.bundle.name} needs colour frames; the source gives "
                f"gray ones for the live model {live_name}")
    return None


def lower_priority() -> None:
    """Give this thread (Linux: a thread is a task with its own nice value) the lowest CPU priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
    except OSError as exc:  # not fatal: the shadow then competes with the live path as an equal
        logger.warning("shadow: cannot lower its thread's priority (%s)", exc)


class ShadowSink(VerdictSink):
    """Scores each verdict's frame with the candidate, on the sink's thread, and compares the two verdicts."""

    name = "shadow"
    queue_events = 2 * MAX_PENDING  # never full: wants() lets at most MAX_PENDING in

    def __init__(self, cfg: Callable[[], Config]) -> None:
        self.cfg = cfg
        self.candidate: Candidate | None = None
        self.configured: Path | None = None  # the shadow.model last followed
        self.error: str | None = None  # why the last candidate asked for was refused
        self._slots = threading.BoundedSemaphore(MAX_PENDING)
        self._skipped_loading = 0  # frames skipped while a candidate was loading: counted on it once it is there

    def wants(self, event: VerdictEvent) -> bool:
        # configured before candidate: the shadow's thread sets them the other way round, so a candidate just
        # loaded is never taken for none.
        settled = self.cfg().shadow.model == self.configured
        candidate = self.candidate
        if candidate is None and settled:
            self._skipped_loading = 0  # none came of the loading (refused, or stopped)
            return False
        if settled and self._skipped_loading:
            candidate.skipped, self._skipped_loading = candidate.skipped + self._skipped_loading, 0
        if not self._slots.acquire(blocking=False):
            if settled:
                candidate.skipped += 1  # only the frame loop counts skips: one writer
            else:  # a candidate is loading (the first, or one a reload named): its skips are counted on it
                self._skipped_loading += 1
            return False
        return True

    def on_verdict(self, event: VerdictEvent) -> None:
        try:
            self._follow_config()
            candidate = self.candidate
            if candidate is not None and not candidate.checked:
                candidate.checked = True
                problem = colour_problem(candidate, event.spec.color, event.bundle.name)
                if problem is not None:
                    self.error, self.candidate, candidate = problem, None, None
                    logger.error("%s", problem)
            if candidate is not None:
                shadow = candidate.inspector.inspect(event.image, bgr=event.image.ndim == 3)
                candidate.record(event.seq, event.result, shadow)
        finally:
            self._slots.release()

    def on_start(self) -> None:
        lower_priority()
        self._follow_config()  # a configured candidate is loaded before the first frame comes

    def close(self) -> None:
        candidate = self.candidate
        if candidate is not None:  # the journal keeps what the comparison found, for after a stop
            found = candidate.stats()
            logger.info("shadow %s at exit: %d frame(s) compared, %d agreed, %d disagreed, %d skipped",
                        candidate.inspector.bundle.name, found["frames"], found["agreements"],
                        found["disagreements"], found["skipped"])

    def _follow_config(self) -> None:
        """shadow.model changed (by a reload): load it, here on the shadow's thread, or stop."""
        wanted = self.cfg().shadow.model
        if wanted == self.configured:
            return
        try:
            if wanted is None:
                self.stop("shadow.model is null")
            else:
                self.use(load_candidate(wanted, self.cfg()))
        except ShadowRefused as exc:
            self.error, self.candidate = str(exc), None
            logger.error("%s (shadow.model %s); the live model goes on alone", exc, wanted)
        finally:  # only now: until the candidate is loaded, wants() lets frames in for it (or counts them skipped)
            self.configured = wanted

    def use(self, candidate: Candidate) -> None:
        self.candidate, self.error = candidate, None
        logger.info("shadow: %s (%s) scores beside the live model from the next frame", candidate.inspector.bundle.name,
                    candidate.path)

    def stop(self, why: str) -> None:
        if self.candidate is not None:
            logger.info("shadow: %s stopped (%s)", self.candidate.inspector.bundle.name, why)
        self.candidate = None

    def stats(self) -> dict[str, Any]:
        candidate = self.candidate
        section = candidate.stats() if candidate is not None else {"model": None}
        section["error"] = self.error
        return section


def shadow_command(sink: ShadowSink | None, cfg: Config, live: Inspector, base_dir: Path, args, reply) -> None:
    """cmd/shadow, between two frames: a candidate's path (``base_dir``, the config file's folder, for a relative
    one) or stop."""
    name = "shadow"
    if sink is None:
        reply(name, False, "this station runs no shadow output", args.request_id)
        return
    if args.stop:
        was = sink.candidate
        sink.stop("by command")
        reply(name, True, f"shadow {was.inspector.bundle.name} stopped" if was else "no shadow was running",
              args.request_id)
        return
    try:
        candidate = load_candidate(base_dir / Path(args.model).expanduser(), cfg)
        problem = colour_problem(candidate, live.spec.color, live.bundle.name)
        if problem is not None:
            raise ShadowRefused(problem)
        candidate.checked = True
    except ShadowRefused as exc:
        sink.error = str(exc)
        logger.warning("command 'shadow' refused: %s", exc)
        reply(name, False, f"{exc}; the live model {live.bundle.name} goes on", args.request_id)
        return
    sink.use(candidate)
    bundle = candidate.inspector.bundle
    reply(name, True, f"shadow {bundle.name} ({bundle.model_sha256[:12]}, threshold {candidate.inspector.threshold:.6g})"
          f" scores beside {live.bundle.name} from the next frame", args.request_id)
