"""Thresholds and figures of merit."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta
from sklearn.metrics import average_precision_score, roc_auc_score

from edge.core.scoring import fails

CONFIDENCE = 0.95


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The study's rule: the threshold with the best F1, "normal" (label 0) as the positive class.

    A part fails when score >= threshold; thresholds lie midway between neighbouring observed scores.
    """
    order = np.argsort(scores, kind="stable")
    s, normal = scores[order], (labels[order] == 0)
    unique = np.unique(s)
    candidates = np.concatenate([[unique[0] - 1.0], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1.0]])
    predicted_normal = np.searchsorted(s, candidates, side="left")  # count of scores < t
    true_positive = np.concatenate([[0], np.cumsum(normal)])[predicted_normal]
    precision = np.divide(true_positive, predicted_normal, out=np.zeros(len(candidates)), where=predicted_normal > 0)
    recall = true_positive / max(normal.sum(), 1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(candidates)), where=(precision + recall) > 0)
    best = int(np.argmax(f1))
    return float(candidates[best]), {"f1": float(f1[best]), "precision": float(precision[best]), "recall": float(recall[best])}


def conformal_rank(n_good: int, target_frr: float) -> int:
    """Which smallest good score (1-based) the conformal threshold sits on; above n_good it is out of reach."""
    return math.ceil((n_good + 1) * (1 - target_frr))


def min_good_for_target(target_frr: float) -> int:
    """Fewest good scores with conformal_rank <= n, found with the same arithmetic the threshold uses."""
    if not 0 < target_frr < 1:
        raise ValueError(f"target false-reject rate must lie strictly between 0 and 1, got {target_frr}")
    n = max(1, math.ceil(1 / target_frr) - 2)  # the exact answer is ceil(1/a) - 1; start below it for rounding
    while conformal_rank(n, target_frr) > n:
        n += 1
    return n


def good_quantile_reach(n_good: int, target_frr: float) -> dict[str, bool | int | str]:
    """Whether n_good scores can hold the target rate, and a note for people when they cannot."""
    needed = min_good_for_target(target_frr)
    reach: dict[str, bool | int | str] = {"target_frr_reachable": n_good >= needed, "min_good_for_target": needed}
    if n_good < needed:
        reach["note"] = (f"only {n_good} good calibration images; --target-frr {target_frr:g} needs at least "
                         f"{needed}: the threshold is the target quantile of a log-normal fitted to the usual good "
                         "scores, so the false-reject rate is estimated, not held to the target")
    return reach


def good_quantile_threshold(good_scores: np.ndarray, target_frr: float) -> float:
    """Threshold from good parts only: the order statistic that keeps the false-reject rate <= target.

    The ceil((n + 1)(1 - a))-th smallest score is the conformal choice: a new good part from the same
    distribution fails with probability at most `a`.
    """
    s = np.sort(good_scores)
    n = len(s)
    rank = conformal_rank(n, target_frr)
    if rank > n:
        return float(s[-1] * (1 + 1e-6) + 1e-12)  # too few good images for this rate: reject none of them
    upper = s[rank - 1]
    return float(np.nextafter(upper, np.inf))  # fail when >= threshold, so the rank-th score passes


def clopper_pearson(failures: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial confidence interval of a rate."""
    if total == 0:
        return (0.0, 1.0)
    alpha = 1 - confidence
    low = 0.0 if failures == 0 else float(beta.ppf(alpha / 2, failures, total - failures + 1))
    high = 1.0 if failures == total else float(beta.ppf(1 - alpha / 2, failures + 1, total - failures))
    return (low, high)


def confusion(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts with "anomalous fails" as the detection: tp = anomalous parts that failed."""
    failed = fails(scores, threshold)
    anomalous = labels == 1
    return {
        "tp": int(np.sum(failed & anomalous)),
        "fp": int(np.sum(failed & ~anomalous)),
        "tn": int(np.sum(~failed & ~anomalous)),
        "fn": int(np.sum(~failed & anomalous)),
    }


def study_f1(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall and F1 with "normal" as the positive class, as the study counted them."""
    tp, fp, fn = counts["tn"], counts["fn"], counts["fp"]  # normal-positive view of the same counts
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def catch_and_pass_rates(counts: dict[str, int]) -> dict[str, float | None]:
    """Plain-word rates: the share of defect images that fail and of good images that pass (None without any)."""
    defects, good = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
    return {
        "defect_catch_rate": counts["tp"] / defects if defects else None,
        "good_pass_rate": counts["tn"] / good if good else None,
    }


def image_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """AUROC and AP (anomalous positive), and the study's F1 at the given threshold."""
    both = len(np.unique(labels)) == 2
    counts = confusion(scores, labels, threshold)
    good = labels == 0
    frr = counts["fp"] / max(int(good.sum()), 1)
    low, high = clopper_pearson(counts["fp"], int(good.sum()))
    result: dict[str, float | int | None] = {
        "image_auroc": float(roc_auc_score(labels, scores)) if both else None,
        "average_precision": float(average_precision_score(labels, scores)) if both else None,
        "threshold": float(threshold),
        **study_f1(counts),
        **counts,
        **catch_and_pass_rates(counts),
        "false_reject_rate": frr,
        "false_reject_rate_ci95": [low, high],
        "n_good": int(good.sum()),
        "n_anomalous": int((~good).sum()),
    }
    return result


def pixel_auroc(heats: list[np.ndarray], masks: list[np.ndarray]) -> float | None:
    """AUROC over all pixels of all images with a mask (good images count as all-normal)."""
    if not heats:
        return None
    y = np.concatenate([m.ravel() for m in masks])
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.concatenate([h.ravel() for h in heats])))


def pro_score(heats: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = 0.3, steps: int = 64) -> float | None:
    """Per-region overlap (Bergmann et al., MVTec AD): mean overlap per defect region, averaged up to FPR 0.3,
    normalized to [0, 1]."""
    import cv2

    regions, normal_values = [], []
    for heat, mask in zip(heats, masks):
        normal_values.append(heat[~mask])
        count, labels = cv2.connectedComponents(mask.astype(np.uint8))
        for label in range(1, count):
            regions.append(heat[labels == label])
    if not regions:
        return None
    normal = np.sort(np.concatenate(normal_values))
    thresholds = np.quantile(normal, np.linspace(1.0, 1.0 - fpr_limit, steps))
    fprs, pros = [], []
    for t in thresholds:
        fprs.append(1.0 - np.searchsorted(normal, t, side="left") / normal.size)
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    if keep.sum() < 2:
        return None
    return float(np.trapezoid(pros[keep], fprs[keep]) / fpr_limit)
