"""Scoring a labelled set with a bundle, through the device's own Inspector, and the report it feeds."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.core.bundle import Bundle, load_bundle, publish_dir, staging_dir
from edge.core.files import write_json_atomic
from edge.core.inspector import Inspector
from edge.core.scoring import fails
from trainer import fitness, metrics
from trainer.data import DataError, Dataset, Sample
from trainer.per_class import per_class, pixel_parity

logger = logging.getLogger(__name__)



@dataclass
class ScoredSet:
    samples: list[Sample]
    scores: np.ndarray
    labels: np.ndarray
    heats: list[np.ndarray]
    verdicts: list[str]
    reasons: list[str | None]

    def good_scores(self) -> np.ndarray:
        return self.scores[self.labels == 0]


def score_samples(inspector: Inspector, samples: list[Sample], color: str, desc: str, keep_heats: bool = True) -> ScoredSet:
    """Score every sample; the same Inspector.inspect call as `lineguard score` and the daemon."""
    scores, heats, verdicts, reasons = np.zeros(len(samples)), [], [], []
    for i, sample in enumerate(tqdm(samples, desc=desc, unit="img", leave=False, mininterval=0.5)):
        try:
            result = inspector.inspect(sample.image(color))
        except ValueError as exc:
            raise DataError(f"{sample.path or sample.name}: {exc}") from None
        scores[i] = result.score
        verdicts.append(result.verdict)
        reasons.append(result.reason)
        if keep_heats:
            heats.append(result.heat)
    labels = np.array([s.label for s in samples], dtype=int)
    return ScoredSet(samples, scores, labels, heats, verdicts, reasons)


def pixel_figures(scored: ScoredSet, shape: tuple[int, int]) -> dict[str, float | None]:
    """Pixel AUROC and PRO over test images, when the set has masks."""
    if not any(s.mask_path is not None for s in scored.samples):
        return {}
    masks = [s.mask(shape) for s in scored.samples]
    return {
        "pixel_auroc": metrics.pixel_auroc(scored.heats, masks),
        "pro": metrics.pro_score(scored.heats, masks),
    }


def parity(int8: ScoredSet, float_: ScoredSet, int8_threshold: float, float_threshold: float) -> dict[str, float | None]:
    """How far the shipped int8 model is from the float one on the same images."""
    both = len(np.unique(int8.labels)) == 2
    auroc_int8 = metrics.roc_auc_score(int8.labels, int8.scores) if both else None
    auroc_float = metrics.roc_auc_score(float_.labels, float_.scores) if both else None
    agree = np.mean(fails(int8.scores, int8_threshold) == fails(float_.scores, float_threshold))
    return {
        "auroc_int8": auroc_int8,
        "auroc_float": auroc_float,
        "auroc_delta": (auroc_int8 - auroc_float) if both else None,
        "verdict_agreement": float(agree),
        "float_threshold": float(float_threshold),
    }


def evaluate_bundle(bundle_dir: Path, dataset: Dataset, report_dir: Path, threads: int = 2,
                    min_catch: float = fitness.MIN_CATCH) -> dict:
    """`lineguard evaluate`: score the test set with the int8 and float models, write metrics and report."""
    if not dataset.test:
        raise DataError(f"{dataset.description}: no test images to evaluate")
    bundle = load_bundle(bundle_dir, verify_float=True)
    if bundle.preprocess.color != dataset.color and dataset.color == "rgb":
        logger.warning("data looks colour but the model reads %s", bundle.preprocess.color)
    int8 = Inspector(bundle, threads=threads)
    float_model = Inspector(bundle, threads=threads, use_float_model=True)
    scored = score_samples(int8, dataset.test, bundle.preprocess.color, "scoring (int8)")
    scored_float = score_samples(float_model, dataset.test, bundle.preprocess.color, "scoring (float)")
    float_threshold = bundle.metrics.get("parity", {}).get("float_threshold", bundle.calibration.threshold)
    result = summarize(bundle, scored, scored_float, float_threshold, min_catch)
    staged = staging_dir(report_dir)
    from trainer.report import write_report

    write_report(staged, bundle, int8, scored, result)
    write_json_atomic(staged / "metrics.json", result)
    publish_dir(staged, report_dir)
    return result


def summarize(bundle: Bundle, scored: ScoredSet, scored_float: ScoredSet, float_threshold: float,
              min_catch: float = fitness.MIN_CATCH) -> dict:
    """metrics.json: fit or not (catch and false-reject rates at the bundle threshold, per class, operating
    points), the study's figures, the best-F1 point, pixel figures, parity."""
    threshold = bundle.calibration.threshold
    result = {"fitness": fitness.fitness(scored.scores, scored.labels, [s.defect for s in scored.samples], threshold,
                                         fitness.calibration_facts(bundle.calibration.stats), min_catch)}
    result.update(metrics.image_metrics(scored.scores, scored.labels, threshold))
    if len(np.unique(scored.labels)) == 2:
        best_t, best = metrics.best_f1_threshold(scored.scores, scored.labels)
        result["best_f1"] = {"threshold": best_t, **best}
    result.update(pixel_figures(scored, (bundle.preprocess.height, bundle.preprocess.width)))
    result["unscorable"] = sum(v == "unscorable" for v in scored.verdicts)  # scores still count in the figures
    shape = (bundle.preprocess.height, bundle.preprocess.width)
    result["parity"] = {**parity(scored, scored_float, threshold, float_threshold),
                        **pixel_parity(scored, scored_float, shape)}
    if len(np.unique(scored.labels)) == 2:
        result["per_class"] = per_class(scored, shape)
    result["calibration_method"] = bundle.calibration.method
    result["model"] = {"name": bundle.name, "sha256": bundle.model_sha256}
    return result
