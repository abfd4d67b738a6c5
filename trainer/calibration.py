"""The threshold from good images scored out of fold: the order statistic that holds a target false-reject rate,
its confidence interval, and the good images that score like defects.

Every training good image is scored by a model fitted without it (k-fold cross-fitting), so all of them count and
none is scored by a model that has seen it. Folds come from a hash of each image's name: adding one image leaves
every other image in its fold, so a retrain with one more good image moves the threshold by little.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import beta, binom, norm

from edge.core.scoring import edge_band_mask
from trainer.metrics import CONFIDENCE, clopper_pearson, conformal_rank, good_quantile_threshold, min_good_for_target

FOLDS = 10  # each fold's model sees 90 % of the goods: out-of-fold scores run only a little above the full model's
# A good image whose log score lies this many robust standard deviations (1.4826 MAD) above the median is listed
# for a person to check, and at most half the target rate of the good images (at least one) are left out of the
# rank: one glare or mislabelled image must not set the threshold on its own.
OUTLIER_Z = 5.0
MIN_GOOD_FOR_OUTLIERS = 20  # below this a median and MAD say too little to call anything unusual
EDGE_BAND_FRACTION = 0.05  # of the shorter side: the outer band the edge check looks at (19 % of a square frame)
# ... and it speaks only when the band would take at least this share off the threshold's height above the median
# good score (screw: 0.25; magnetic tile, whose top scores also peak there: 0.003)
EDGE_GAIN = 0.1


def fold_of(name: str, folds: int = FOLDS) -> int:
    """The fold an image belongs to, from its name alone."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % folds


def fold_indices(names: list[str], folds: int = FOLDS) -> list[np.ndarray]:
    """Indices per fold; empty folds are dropped (a handful of images may not fill every fold)."""
    assigned = np.array([fold_of(name, folds) for name in names], dtype=np.int64)
    return [np.flatnonzero(assigned == fold) for fold in range(folds) if np.any(assigned == fold)]


def _log_spread(scores: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 MAD) of the log scores."""
    logs = np.log(np.maximum(scores, 1e-12))
    median = float(np.median(logs))
    return median, 1.4826 * float(np.median(np.abs(logs - median)))


def unusual_goods(scores: np.ndarray, share: float, z_limit: float = OUTLIER_Z) -> np.ndarray:
    """Indices of good scores far above the rest (highest first), at most max(1, share * n) of them."""
    n = len(scores)
    if n < MIN_GOOD_FOR_OUTLIERS:
        return np.empty(0, dtype=np.int64)
    median, spread = _log_spread(scores)
    if spread <= 0:
        return np.empty(0, dtype=np.int64)
    z = (np.log(np.maximum(scores, 1e-12)) - median) / spread
    far = np.flatnonzero(z > z_limit)
    far = far[np.argsort(-scores[far], kind="stable")]
    return far[:max(1, int(math.floor(share * n)))]


@dataclass
class ThresholdChoice:
    """The shipped threshold and what can be said about it."""

    threshold: float
    target_frr: float
    n_good: int
    rank: int  # the rank-th smallest kept good score passes; anything at or above threshold fails
    reachable: bool  # enough good images to hold the target rate
    add_good: int  # how many more good images the target needs (0 when reachable)
    expected_frr: float  # the false-reject rate a new good part meets, expected
    frr_interval: tuple[float, float]  # ... and its interval at CONFIDENCE
    threshold_interval: tuple[float, float | None]  # where the target quantile of good scores lies; None: unbounded
    unusual: list[int] = field(default_factory=list)  # indices into the good scores, highest first
    note: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["frr_interval"] = list(self.frr_interval)
        out["threshold_interval"] = list(self.threshold_interval)
        return out


def _quantile_interval(kept: np.ndarray, quantile: float) -> tuple[float, float | None]:
    """Distribution-free interval of a quantile from order statistics (ranks from the binomial)."""
    n = len(kept)
    alpha = 1 - CONFIDENCE
    low_rank = int(binom.ppf(alpha / 2, n, quantile))  # scores below the quantile: at least this many
    high_rank = int(binom.ppf(1 - alpha / 2, n, quantile)) + 1
    low = float(kept[max(low_rank, 1) - 1])
    high = float(kept[high_rank - 1]) if high_rank <= n else None
    return low, high


def _log_normal_quantile(kept: np.ndarray, quantile: float) -> float:
    """The quantile of a log-normal with the scores' log median and robust spread; the highest score when they
    do not spread."""
    median, spread = _log_spread(kept)
    if spread <= 0:
        return float(np.nextafter(kept[-1], np.inf))
    return float(np.exp(median + norm.ppf(quantile) * spread))


def choose_threshold(good_scores: np.ndarray, target_frr: float) -> ThresholdChoice:
    """The conformal threshold on out-of-fold good scores, unusual ones left out, with its intervals.

    With n kept scores the ceil((n + 1)(1 - a))-th smallest is the threshold's last passing score: a new good part
    fails with probability at most a. Its false-reject rate is Beta(n + 1 - r, r) distributed. With too few images
    for that rank, the best the data supports is a model of them: the target quantile of a log-normal fitted to the
    usual scores (median and MAD of the logs, so an unusual image does not drag it), not "the highest plus a
    margin"; its rate is then an estimate, and the note asks for the images that would make it a guarantee.
    """
    scores = np.asarray(good_scores, dtype=np.float64)
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("calibration needs finite scores of at least one good image")
    unusual = unusual_goods(scores, target_frr / 2)
    kept = np.sort(np.delete(scores, unusual))
    n, dropped = len(kept), len(unusual)
    rank = conformal_rank(n, target_frr)
    reachable = rank <= n
    share = dropped / scores.size  # unusual images stay rejected: count them in the rate
    if reachable:
        threshold = good_quantile_threshold(kept, target_frr)  # the rank-th smallest kept score passes
        alpha = 1 - CONFIDENCE
        tail, inside = n + 1 - rank, rank
        expected = share + (1 - share) * tail / (n + 1)
        low = share + (1 - share) * float(beta.ppf(alpha / 2, tail, inside))
        high = share + (1 - share) * float(beta.ppf(1 - alpha / 2, tail, inside))
    else:  # too few for a rank: the quantile of a log-normal fitted robustly to the usual scores
        rank = n
        threshold = _log_normal_quantile(kept, 1 - target_frr)
        above = int(np.sum(scores >= threshold))
        expected = max(target_frr, above / scores.size)
        low, high = clopper_pearson(above, scores.size)
    add = 0 if reachable else min_good_for_target(target_frr) - n
    choice = ThresholdChoice(
        threshold=threshold, target_frr=target_frr, n_good=int(scores.size), rank=rank, reachable=reachable,
        add_good=add, expected_frr=expected, frr_interval=(low, high),
        threshold_interval=_quantile_interval(kept, 1 - target_frr), unusual=[int(i) for i in unusual])
    choice.note = describe(choice)
    return choice


def describe(choice: ThresholdChoice) -> str:
    """One sentence for people: what the threshold holds and, when short of images, how many to add."""
    low, high = choice.frr_interval
    held = (f"{choice.n_good} good images scored out of fold: a new good part is rejected with probability about "
            f"{choice.expected_frr:.2%} ({low:.2%} to {high:.2%})")
    if choice.unusual:
        held += f"; {len(choice.unusual)} unusual good image(s) left out of the threshold, listed for a check"
    if not choice.reachable:
        held += (f"; to hold the target {choice.target_frr:.2%} without assuming how good scores spread, add "
                 f"{choice.add_good} more good image(s): until then the threshold is the target quantile of a "
                 "log-normal fitted to the usual good scores")
    return held


def edge_peaks(good_heats: list[np.ndarray], good_scores: np.ndarray, target_frr: float, threshold: float) -> dict | None:
    """When most of the highest good scores peak in the frame's outer band, what leaving that band out would do.

    Parts at random angles on a dusty background (screw) put their highest good scores on the frame's edge, where a
    speck meets the padding of the backbone's convolutions, not on the part: the threshold is then set by the edge.
    Returns None when fewer than half of the top scores peak there, when the band would lower the threshold by
    less than EDGE_GAIN of its height above the median good score, or with too few goods to say. The threshold with
    the band is the same rule on the same out-of-fold maps, so it is what `--edge-band` would ship.
    """
    scores = np.asarray(good_scores, dtype=np.float64)
    if len(scores) < MIN_GOOD_FOR_OUTLIERS or len(good_heats) != len(scores):
        return None
    height, width = good_heats[0].shape[:2]
    band = max(1, round(EDGE_BAND_FRACTION * min(height, width)))
    top = np.argsort(-scores, kind="stable")[:max(3, math.ceil(2 * target_frr * len(scores)))]
    peaks = [np.unravel_index(int(np.argmax(good_heats[i])), (height, width)) for i in top]
    at_edge = sum(min(r, c, height - 1 - r, width - 1 - c) < band for r, c in peaks)
    if 2 * at_edge <= len(top):
        return None
    left_in = ~edge_band_mask((height, width), band)  # the device's own band (edge.core.scoring)
    inner = np.array([float(np.max(heat[left_in])) for heat in good_heats])
    with_band = choose_threshold(inner, target_frr).threshold
    if threshold - with_band < EDGE_GAIN * (threshold - float(np.median(scores))):
        return None  # the edge holds some top scores but does not set the threshold
    note = (f"{at_edge} of the {len(top)} highest good scores peak in the outer {band} px of the {width}x{height} "
            f"model input: if parts never reach the frame's edge, --edge-band {band} would set the threshold at "
            f"{with_band:.4g} instead of {threshold:.4g}")
    return {"top_goods": len(top), "at_edge": int(at_edge), "band_px": band, "threshold_with_band": with_band,
            "note": note}
