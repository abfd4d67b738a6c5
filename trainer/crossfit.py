"""Out-of-fold scores of every training good image, for the threshold (trainer.calibration).

A kind whose fit module has `refit(model, keep)` (the features heads refit in seconds on features already
extracted) is fitted once on all training goods, then once per fold without that fold; each fold's model is
written as a real bundle next to the staged one and its held-out images are scored by the device's Inspector, int8
and float. So every good image counts for the threshold, none is scored by a model that saw it, and the scores are
the ones the device would give.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np

from edge.core.bundle import Bundle, save_manifest
from edge.core.inspector import Inspector
from trainer.calibration import FOLDS, fold_indices
from trainer.data import Sample
from trainer.evaluate import ScoredSet, score_samples

logger = logging.getLogger(__name__)


def supported(kind_module: ModuleType) -> bool:
    return callable(getattr(kind_module, "refit", None))


def _fold_bundle(bundle: Bundle, folder: Path, kind_module: ModuleType, fold_model, opts) -> Bundle:
    """The staged bundle with the fold's model in place of the full one, in `folder`."""
    shutil.copytree(bundle.path, folder, dirs_exist_ok=True)
    stages = kind_module.export(fold_model, None, folder, opts.seed)
    architecture = {**bundle.architecture, **kind_module.architecture(opts, fold_model)}
    fold = dataclasses.replace(bundle, path=folder, stages=stages, architecture=architecture)
    save_manifest(fold)
    return fold


def _merge(parts: list[tuple[np.ndarray, ScoredSet]], samples: list[Sample]) -> ScoredSet:
    """Fold results back into the samples' order."""
    n = len(samples)
    scores, heats = np.zeros(n), [None] * n
    verdicts, reasons = [""] * n, [None] * n
    for held, scored in parts:
        for j, i in enumerate(held):
            scores[i] = scored.scores[j]
            verdicts[i], reasons[i] = scored.verdicts[j], scored.reasons[j]
            if scored.heats:
                heats[i] = scored.heats[j]
    labels = np.array([s.label for s in samples], dtype=int)
    return ScoredSet(samples, scores, labels, [h for h in heats if h is not None], verdicts, reasons)


def out_of_fold(bundle: Bundle, kind_module: ModuleType, model, opts, samples: list[Sample]) -> tuple[ScoredSet, ScoredSet]:
    """(int8, float) scores of every sample by the model refitted without its fold."""
    count = kind_module.refit_folds(model) if callable(getattr(kind_module, "refit_folds", None)) else FOLDS
    folds = fold_indices([s.name for s in samples], count)
    color = bundle.preprocess.color
    int8_parts, float_parts = [], []
    with tempfile.TemporaryDirectory(prefix=".cross-fit-", dir=bundle.path.parent) as scratch:
        for number, held in enumerate(folds, start=1):
            keep = np.ones(len(samples), dtype=bool)
            keep[held] = False
            fold_model = kind_module.refit(model, keep)
            folder = Path(scratch) / f"fold-{number}"
            fold = _fold_bundle(bundle, folder, kind_module, fold_model, opts)
            held_samples = [samples[i] for i in held]
            desc = f"cross-fit {number}/{len(folds)}"
            int8_parts.append((held, score_samples(Inspector(fold, threads=opts.threads), held_samples, color,
                                                   f"{desc} (int8)")))
            float_parts.append((held, score_samples(Inspector(fold, threads=opts.threads, use_float_model=True),
                                                    held_samples, color, f"{desc} (float)", keep_heats=False)))
            shutil.rmtree(folder, ignore_errors=True)
    logger.info("cross-fitting: %d good images scored by %d models, each fitted without the image's fold",
                len(samples), len(folds))
    return _merge(int8_parts, samples), _merge(float_parts, samples)
