"""The drift watch: are good parts still scored, and frames still lit, the way the bundle's reference says?

Four signals, each a stream of values turned into normal scores against the bundle's reference: a value's rank
u among the reference's good values (its quantiles, edge.core.reference), clipped to [0.005, 0.995], becomes
z = Phi^-1(u). Without drift z is standard normal whatever shape the figure's distribution has. Each direction
worth watching is a one-sided CUSUM, S = max(0, S + z - k) (or - z - k), which trips when S exceeds h:

- score: the scores of parts that passed, upward only. Passed parts are the good scores below the threshold, so
  a score's rank is taken among the reference's good scores below the threshold in force: u = F(s) / F(t).
- brightness, contrast, sharpness (mean, standard deviation and variance of the Laplacian of the model input, as
  edge.core.quality measures them), both ways, on every frame that did not fail (an unscorable, badly lit frame
  counts: it is what a lighting change looks like).

With h = 12 and k = 0.5 one CUSUM's in-control average run length is about 1.55 million frames
(:func:`in_control_arl`, a Brook-Evans Markov chain); seven of them raise a false alarm about once every
220,000 frames or less often. A 1 SD shift trips in about 25 frames, 2 SD in 10, a frame far outside the
reference in 6. A tripped signal stays tripped until its CUSUM is back at 0 (S is capped at 2h: about 2h/k = 48
frames once the drift is gone); the watch trips when any signal does, and then it alerts once.

Signals whose reference the bundle lacks (bundles from before the reference) take one from their first
``drift.baseline_frames`` frames at the station, and say so. Runs on a sink thread: nothing here is on the frame
path.
"""
from __future__ import annotations

import csv
import io
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

from edge.config.watch import DriftConfig
from edge.core.files import read_limited
from edge.core.preprocess import crop, scale, to_pixels
from edge.core.quality import measure
from edge.core.reference import IMAGE_FIGURES, DriftReference, Distribution
from edge.publish import messages
from edge.publish.sinks import VerdictEvent, VerdictSink

logger = logging.getLogger("lineguard")

RANK_CLIP = 0.005  # ranks are clipped to [RANK_CLIP, 1 - RANK_CLIP]: |z| <= 2.576
CAP_FACTOR = 2.0  # a tripped CUSUM stops growing at this many times the limit, so recovery is bounded
MAX_REPORT_ROWS = 200000  # an older bundle's report/scores.csv read for its good scores: at most this many rows
MAX_REPORT_BYTES = 32 * 1024 * 1024  # ... and bytes
_NORMAL = NormalDist()
Z_CLIP = _NORMAL.inv_cdf(1 - RANK_CLIP)


class Ranker:
    """A value's rank among a reference distribution's (ties share their middle rank)."""

    def __init__(self, dist: Distribution) -> None:
        q = np.asarray(dist.quantiles, dtype=np.float64)
        values, inverse = np.unique(q, return_inverse=True)
        self.values = values
        self.ranks = np.bincount(inverse, np.linspace(0.0, 1.0, q.size)) / np.bincount(inverse)
        self.median, self.source = dist.median, dist.source

    def cdf(self, value: float) -> float:
        return float(np.interp(value, self.values, self.ranks, left=0.0, right=1.0))


def normal_score(rank: float) -> float:
    return _NORMAL.inv_cdf(min(max(rank, RANK_CLIP), 1.0 - RANK_CLIP))


class Cusum:
    """One side of a CUSUM, with the values since it last left zero (the change's estimated start)."""

    def __init__(self, sign: int, limit: float, allowance: float) -> None:
        self.sign, self.limit, self.allowance = sign, limit, allowance
        self.s, self.tripped, self.count, self.sum_z, self.sum_raw = 0.0, False, 0, 0.0, 0.0

    def add(self, z: float, raw: float) -> bool:
        """True when this value trips it."""
        s = self.s + self.sign * z - self.allowance
        if s <= 0:
            self.s, self.count, self.sum_z, self.sum_raw, self.tripped = 0.0, 0, 0.0, 0.0, False
            return False
        self.s = min(s, CAP_FACTOR * self.limit)
        self.count, self.sum_z, self.sum_raw = self.count + 1, self.sum_z + z, self.sum_raw + raw
        if self.s > self.limit and not self.tripped:
            self.tripped = True
            return True
        return False


class Signal:
    """One figure: its reference (or the station's first frames), its CUSUM(s) and its recent mean."""

    def __init__(self, name: str, dist: Distribution | None, signs: tuple[int, ...], settings: DriftConfig) -> None:
        self.name, self.settings = name, settings
        self.ranker = Ranker(dist) if dist is not None else None
        self.baseline: list[float] = []
        self.sides = [Cusum(sign, settings.limit, settings.allowance) for sign in signs]
        self.recent: deque[float] = deque(maxlen=settings.window)
        self.recent_mean: float | None = None  # of `recent`; read by stats from other threads, never the deque
        self.frames = 0

    def add(self, value: float, top: float | None = None) -> bool:
        """Add one value (``top``: ranks are taken among reference values below it); True when it trips."""
        if not math.isfinite(value):
            return False
        if self.ranker is None:
            self.baseline.append(value)
            if len(self.baseline) >= self.settings.baseline_frames:
                self.ranker = Ranker(Distribution.of(self.baseline, f"first {len(self.baseline)} frames at "
                                                     "this station"))
                self.baseline = []
            return False
        rank = self.ranker.cdf(value)
        if top is not None:
            below = self.ranker.cdf(top)
            if below <= 0:
                return False
            rank = rank / below
        z = normal_score(rank)
        self.frames += 1
        self.recent.append(z)
        self.recent_mean = sum(self.recent) / len(self.recent)  # at most drift.window additions, on this thread
        return any([side.add(z, value) for side in self.sides])

    @property
    def tripped(self) -> Cusum | None:
        return next((side for side in self.sides if side.tripped), None)

    def reason(self) -> str | None:
        side = self.tripped
        if side is None:
            return None
        shift = side.sum_z / max(side.count, 1)
        if self.name == "score":
            return f"scores of passed parts up {shift:.1f} SD over the last {side.count}"
        mean, median = side.sum_raw / max(side.count, 1), self.ranker.median
        if median > 0:
            change = 100.0 * (mean / median - 1.0)
            return f"{self.name} {'up' if change >= 0 else 'down'} {abs(change):.0f} % over the last {side.count}"
        return f"{self.name} {'up' if shift >= 0 else 'down'} {abs(shift):.1f} SD over the last {side.count}"

    def report(self) -> dict[str, Any]:
        recent = self.recent_mean
        return {
            "statistic": round(max((side.s for side in self.sides), default=0.0), 3),
            "recent_sd": round(recent, 3) if recent is not None else None,
            "frames": self.frames, "drift": self.tripped is not None,
            "reference": self.ranker.source if self.ranker is not None else
            f"learning: {len(self.baseline)} of {self.settings.baseline_frames} frames at this station",
        }


class DriftWatch:
    """The four signals of one model and its reference; fed by :meth:`add`, read by :meth:`report`."""

    def __init__(self, reference: DriftReference | None, settings: DriftConfig) -> None:
        reference = reference or DriftReference()
        self.settings = settings
        self.signals = {"score": Signal("score", reference.scores, (1,), settings)}
        for name in IMAGE_FIGURES:
            self.signals[name] = Signal(name, reference.image.get(name), (1, -1), settings)
        self.trips = 0

    def add(self, verdict: str, score: float, threshold: float, figures: dict[str, float] | None) -> bool:
        """One frame's verdict, score, threshold and image figures; True when the watch trips with it."""
        if verdict == "fail":
            return False
        was = self.active
        if verdict == "pass":
            self.signals["score"].add(score, threshold)
        for name in IMAGE_FIGURES:
            if figures is not None:
                self.signals[name].add(figures[name])
        tripped = self.active and not was
        self.trips += tripped
        return tripped

    @property
    def active(self) -> bool:
        return any(signal.tripped is not None for signal in self.signals.values())

    def reason(self) -> str | None:
        reasons = [r for signal in self.signals.values() if (r := signal.reason()) is not None]
        return "; ".join(reasons) or None

    def report(self) -> dict[str, Any]:
        return {"enabled": True, "drift": self.active, "reason": self.reason(), "trips": self.trips,
                "limit": self.settings.limit, "allowance": self.settings.allowance, "window": self.settings.window,
                "signals": {name: signal.report() for name, signal in self.signals.items()}}


def reference_of(bundle) -> DriftReference:
    """The bundle's reference; for an older bundle without one, the good scores of its report (scores.csv),
    else a log-normal from its calibration's good-score median and 99th percentile. Image figures an older
    bundle does not carry are learned at the station (Signal)."""
    reference = bundle.reference or DriftReference()
    if reference.scores is not None:
        return reference
    scores = _report_good_scores(bundle.path / "report" / "scores.csv")
    if scores is not None:
        return DriftReference(Distribution.of(scores, "good images of the bundle's report"), reference.image)
    stats = bundle.calibration.stats or {}
    p50, p99 = stats.get("good_p50"), stats.get("good_p99")
    if isinstance(p50, (int, float)) and isinstance(p99, (int, float)) and 0 < p50 < p99:
        spread = (math.log(p99) - math.log(p50)) / _NORMAL.inv_cdf(0.99)
        probabilities = np.clip(np.linspace(0.0, 1.0, 101), 0.001, 0.999)
        quantiles = tuple(math.exp(math.log(p50) + _NORMAL.inv_cdf(p) * spread) for p in probabilities)
        source = "log-normal from the calibration's good p50 and p99"
        return DriftReference(Distribution(quantiles, max(int(stats.get("n_good") or 1), 1), source), reference.image)
    return reference


def _report_good_scores(path) -> list[float] | None:
    """Good, scorable rows' scores; read bounded, from a regular file only (a FIFO cannot hang the watch)."""
    try:
        text = read_limited(path, MAX_REPORT_BYTES).decode("utf-8")
        rows = itertools.islice(csv.DictReader(io.StringIO(text, newline="")), MAX_REPORT_ROWS)
        scores = [float(row["score"]) for row in rows if row.get("label") == "0" and not row.get("reason")]
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return None
    scores = [s for s in scores if math.isfinite(s)]
    return scores if len(scores) >= 20 else None


def figures_of(event: VerdictEvent) -> dict[str, float]:
    """Brightness, contrast and sharpness of the frame's model input, as the trainer measured its images."""
    pixels = to_pixels(crop(event.image, event.frame_roi), event.spec, bgr=event.image.ndim == 3)
    return measure(scale(pixels))


class DriftSink(VerdictSink):
    """Feeds the watch from verdicts, on its own thread; tells ``on_trip`` when it trips."""

    name = "drift"

    def __init__(self, settings: Callable[[], DriftConfig], on_trip: Callable[[Any, dict, int], None]) -> None:
        self.settings = settings
        self.on_trip = on_trip
        self.watch: DriftWatch | None = None
        self._key = None

    def wants(self, event: VerdictEvent) -> bool:
        return self.settings().enabled and event.result.verdict != "fail"

    def on_verdict(self, event: VerdictEvent) -> None:
        bundle, settings = event.bundle, self.settings()
        key = (str(bundle.path), bundle.model_sha256, settings)
        if key != self._key:  # another model or other settings: start over against its reference
            self.watch, self._key = DriftWatch(reference_of(bundle), settings), key
        result = event.result
        if self.watch.add(result.verdict, result.score, result.threshold, figures_of(event)):
            self.on_trip(bundle, self.watch.report(), event.seq)

    def stats(self) -> dict[str, Any]:
        if not self.settings().enabled:
            return {"enabled": False, "drift": False, "reason": None}
        watch = self.watch
        return watch.report() if watch is not None else {"enabled": True, "drift": False, "reason": None}


def alert_publisher(cfg, link) -> Callable[[Any, dict, int], None]:
    """What a trip does: a warning in the journal and, with a broker, the drift alert on <base>/alert."""
    def publish(bundle, report: dict, seq: int) -> None:
        logger.warning("drift at seq %d: %s (model %s)", seq, report["reason"], bundle.name)
        if link is not None:
            link.publish(messages.ALERT, messages.to_json(messages.drift_alert(cfg().device_id, bundle, report, seq)),
                         qos=1)
    return publish


def in_control_arl(limit: float, allowance: float, shift: float = 0.0, cells: int = 600) -> float:
    """Average run length of one CUSUM of clipped normal scores (mean ``shift``) from 0 to its first trip:
    the Brook-Evans Markov chain on ``cells`` states."""
    from scipy.stats import norm
    width = limit / cells
    start = np.arange(cells) * width
    edges = (np.arange(cells) + 0.5) * width

    def below(t: np.ndarray) -> np.ndarray:  # P(z <= t) for z clipped to [-Z_CLIP, Z_CLIP]
        p = norm.cdf(t - shift)
        return np.where(t >= Z_CLIP, 1.0, np.where(t < -Z_CLIP, 0.0, p))

    upper = below(edges[None, :] - start[:, None] + allowance)
    lower = np.concatenate([np.zeros((cells, 1)), upper[:, :-1]], axis=1)
    return float(np.linalg.solve(np.eye(cells) - (upper - lower), np.ones(cells))[0])
