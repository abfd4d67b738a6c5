"""Figures per defect class: each class's images against all good test images, so classes compare fairly."""
from __future__ import annotations

import numpy as np

from trainer import metrics


def per_class(scored, shape: tuple[int, int]) -> dict[str, dict[str, float | int | None]]:
    """{defect class: image AUROC, pixel AUROC, PRO, images} over that class plus the good test images."""
    defects = np.array([s.defect for s in scored.samples])
    good = scored.labels == 0
    has_masks = any(s.mask_path is not None for s in scored.samples)
    table = {}
    for name in sorted(set(defects[scored.labels == 1])):
        chosen = np.flatnonzero(good | (defects == name))
        row: dict[str, float | int | None] = {"images": int(np.sum(defects == name))}
        labels = scored.labels[chosen]
        row["image_auroc"] = float(metrics.roc_auc_score(labels, scored.scores[chosen])) if good.any() else None
        if has_masks and scored.heats:
            heats = [scored.heats[i] for i in chosen]
            masks = [scored.samples[i].mask(shape) for i in chosen]
            row["pixel_auroc"] = metrics.pixel_auroc(heats, masks)
            row["pro"] = metrics.pro_score(heats, masks)
        table[name] = row
    return table


def pixel_parity(int8, float_, shape: tuple[int, int]) -> dict[str, float | None]:
    """Pixel AUROC of the float model on the same images, and its difference from the int8 one."""
    if not float_.heats or not any(s.mask_path is not None for s in int8.samples):
        return {}
    masks = [s.mask(shape) for s in int8.samples]
    auroc_int8, auroc_float = metrics.pixel_auroc(int8.heats, masks), metrics.pixel_auroc(float_.heats, masks)
    if auroc_int8 is None or auroc_float is None:
        return {}
    return {"pixel_auroc_int8": auroc_int8, "pixel_auroc_float": auroc_float,
            "pixel_auroc_delta": auroc_int8 - auroc_float}
