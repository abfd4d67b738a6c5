"""Is the model fit to guard the part? Defects caught and good parts rejected at the shipped threshold, per defect
class and with intervals, the operating points the ranking allows, and a plain verdict.
"""
from __future__ import annotations

import numpy as np

from edge.core.scoring import fails
from trainer.metrics import clopper_pearson

MIN_CATCH = 0.90  # default share of defects a fit model must catch at the shipped threshold
OPERATING_FRRS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.10)  # false-reject rates of the operating-point table


def rate(hits: int, total: int) -> dict:
    """A share with its count and exact interval; None when there is nothing to count."""
    if total == 0:
        return {"rate": None, "count": 0, "total": 0, "ci95": None}
    low, high = clopper_pearson(hits, total)
    return {"rate": hits / total, "count": int(hits), "total": int(total), "ci95": [low, high]}


def at_threshold(scores: np.ndarray, labels: np.ndarray, defects: list[str], threshold: float) -> dict:
    """Catch rate overall and per defect class, and the false-reject rate, at one threshold."""
    failed = fails(scores, threshold)
    good, bad = labels == 0, labels == 1
    names = np.asarray(defects)
    per_class = {str(name): rate(int(np.sum(failed & (names == name))), int(np.sum(names == name)))
                 for name in sorted(set(names[bad].tolist()))}
    return {"threshold": float(threshold), "caught": rate(int(np.sum(failed & bad)), int(bad.sum())),
            "false_rejects": rate(int(np.sum(failed & good)), int(good.sum())), "per_class": per_class}


def operating_points(scores: np.ndarray, labels: np.ndarray, frrs=OPERATING_FRRS) -> list[dict]:
    """For each false-reject rate, the lowest threshold on these images that keeps to it, and what it catches."""
    good = np.sort(scores[labels == 0])
    bad = scores[labels == 1]
    if good.size == 0 or bad.size == 0:
        return []
    points = []
    for frr in frrs:
        allowed = int(np.floor(frr * good.size + 1e-9))  # good images that may fail
        threshold = float(np.nextafter(good[good.size - allowed - 1], np.inf)) if allowed < good.size else float(good[0])
        points.append({"false_reject_target": frr, "threshold": threshold,
                       "false_reject_rate": float(np.mean(fails(good, threshold))),
                       "catch_rate": float(np.mean(fails(bad, threshold)))})
    return points


def calibration_facts(stats: dict | None) -> dict | None:
    """What the verdict needs from a bundle's calibration statistics: the target and whether it was in reach."""
    if not stats or stats.get("target_frr") is None:
        return None
    needed = max(int(stats.get("min_good_for_target") or 0) - int(stats.get("n_good") or 0), 0)
    return {"target_frr": stats["target_frr"], "reachable": stats.get("target_frr_reachable", True),
            "add_good": int(stats.get("add_good", needed))}


def verdict(summary: dict, calibration: dict | None, min_catch: float = MIN_CATCH) -> dict:
    """"fit", "not fit" or "not enough good images", with one sentence that says why."""
    caught, rejected = summary["caught"], summary["false_rejects"]
    target = (calibration or {}).get("target_frr")
    measured = ""
    if caught["rate"] is not None:
        frr = f" at {rejected['rate']:.1%} false rejects" if rejected["rate"] is not None else ""
        measured = f"catches {caught['rate']:.0%} ({caught['count']}/{caught['total']}){frr}"
        weak = [f"{name} {row['rate']:.0%}" for name, row in summary["per_class"].items()
                if row["rate"] is not None and row["rate"] < min_catch]
        if weak and len(summary["per_class"]) > 1:
            measured += "; below target: " + ", ".join(weak)
    if calibration and not calibration.get("reachable", True):
        text = f"not enough good images: add {calibration['add_good']}"
        return {"verdict": "not enough good images", "text": text + (f" ({measured})" if measured else ""),
                "min_catch": min_catch}
    if caught["rate"] is None:
        return {"verdict": "not measured", "text": "not measured: no defect images to test against",
                "min_catch": min_catch}
    frr_ok = target is None or rejected["ci95"] is None or rejected["ci95"][0] <= target
    fit = caught["rate"] >= min_catch and frr_ok
    if not frr_ok:
        measured += f"; false rejects above the target {target:.1%}"
    return {"verdict": "fit" if fit else "not fit", "text": f"{'fit' if fit else 'not fit'}: {measured}",
            "min_catch": min_catch}


def fitness(scores: np.ndarray, labels: np.ndarray, defects: list[str], threshold: float,
            calibration: dict | None, min_catch: float = MIN_CATCH) -> dict:
    """Everything the report's first lines, `train`, `evaluate` and the station page show."""
    summary = at_threshold(scores, labels, defects, threshold)
    summary["operating_points"] = operating_points(scores, labels)
    summary.update(verdict(summary, calibration, min_catch))
    return summary


def summary_lines(summary: dict) -> list[str]:
    """The summary in a few lines of plain text, for the terminal and the report."""
    lines = [summary["text"]]
    caught, rejected = summary["caught"], summary["false_rejects"]
    for label, row in (("defects caught", caught), ("good parts rejected", rejected)):
        if row["rate"] is not None:
            low, high = row["ci95"]
            lines.append(f"{label}: {row['count']}/{row['total']} = {row['rate']:.1%} "
                         f"(95% interval {low:.1%} to {high:.1%}) at threshold {summary['threshold']:.4g}")
    for name, row in summary["per_class"].items():
        if row["rate"] is not None and len(summary["per_class"]) > 1:
            lines.append(f"  {name}: {row['count']}/{row['total']} = {row['rate']:.1%}")
    return lines
