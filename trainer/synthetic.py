"""Synthetic defects pasted onto good images, so a model can learn what "not good" looks like.

The idea of DRAEM (Zavrtanik et al. 2021) and NSA/CutPaste: Perlin-noise shaped regions filled with something
that does not belong. The generators are generic surface faults, not shaped after any one data set:
- foreign texture: a patch of another good image, rotated, rescaled and re-lit, blended in;
- faint shading: a smooth brightness change over a large region;
- texture loss: the region blurred and shifted in brightness (a smeared or unground area);
- scratch: thin curved dark or bright lines;
- spot: small dark or bright blobs (holes, inclusions);
- missing material: a region at the border replaced by a flat dark or bright fill (chips, breaks).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

GENERATORS = ("foreign", "shading", "smear", "scratch", "spot", "chip")
MASK_BANK_SIZE = 512
PERLIN_SCALES = (1, 2, 3, 4, 5, 6)


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise in about [-1, 1] with the given number of lattice cells."""
    height, width = shape
    cy, cx = cells
    angles = rng.uniform(0, 2 * math.pi, (cy + 1, cx + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0, cy, height, endpoint=False)
    xs = np.linspace(0, cx, width, endpoint=False)
    yi, xi = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = yi.astype(int), xi.astype(int)
    fy, fx = yi - y0, xi - x0

    def dot(oy: int, ox: int) -> np.ndarray:
        g = gradients[y0 + oy, x0 + ox]
        return g[..., 0] * (fx - ox) + g[..., 1] * (fy - oy)

    u, v = _fade(fx), _fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return (top * (1 - v) + bottom * v) * math.sqrt(2)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A blobby region of random size, as DRAEM draws them: thresholded Perlin noise."""
    while True:
        cells = (int(rng.choice(PERLIN_SCALES)), int(rng.choice(PERLIN_SCALES)))
        noise = perlin(shape, cells, rng)
        mask = noise > rng.uniform(0.3, 0.6)
        if 0.002 < mask.mean() < 0.35:
            return mask.astype(np.float32)


class DefectSynthesizer:
    """Paints one random synthetic defect per call onto a float image in [0, 1] (HxWxC)."""

    def __init__(self, shape: tuple[int, int, int], good_images: np.ndarray, seed: int = 0,
                 generators: tuple[str, ...] = GENERATORS) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.good = good_images
        self.generators = generators
        self.masks = [perlin_mask(shape[:2], self.rng) for _ in range(MASK_BANK_SIZE)]

    def _mask(self) -> np.ndarray:
        mask = self.masks[int(self.rng.integers(len(self.masks)))]
        k = int(self.rng.integers(4))
        mask = np.rot90(mask, k) if mask.shape[0] == mask.shape[1] else mask
        if self.rng.uniform() < 0.5:
            mask = mask[:, ::-1]
        return np.ascontiguousarray(mask)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (defective image, HxW mask in {0, 1})."""
        kind = self.generators[int(self.rng.integers(len(self.generators)))]
        out, mask = getattr(self, f"_{kind}")(image)
        return np.clip(out, 0.0, 1.0).astype(np.float32), mask.astype(np.float32)

    def _soft(self, mask: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]

    def _foreign(self, image: np.ndarray):
        mask = self._mask()
        source = self.good[int(self.rng.integers(len(self.good)))]
        source = np.rot90(source, int(self.rng.integers(1, 4))) if source.shape[0] == source.shape[1] else source[::-1]
        gain, bias = self.rng.uniform(0.6, 1.4), self.rng.uniform(-0.2, 0.2)
        patch = np.clip(source * gain + bias, 0, 1)
        beta = self.rng.uniform(0.5, 1.0)
        alpha = self._soft(mask) * beta
        return image * (1 - alpha) + patch * alpha, mask

    def _shading(self, image: np.ndarray):
        mask = self._mask()
        delta = self.rng.choice([-1, 1]) * self.rng.uniform(0.06, 0.25)
        alpha = cv2.GaussianBlur(mask, (0, 0), 3.0)[..., None]
        return image + delta * alpha, mask

    def _smear(self, image: np.ndarray):
        mask = self._mask()
        blurred = cv2.GaussianBlur(image, (0, 0), self.rng.uniform(2.0, 5.0)).reshape(image.shape)
        blurred = blurred + self.rng.uniform(-0.15, 0.1)
        alpha = self._soft(mask)
        return image * (1 - alpha) + blurred * alpha, mask

    def _scratch(self, image: np.ndarray):
        height, width = image.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        points = [self.rng.uniform([0, 0], [width, height])]
        heading = self.rng.uniform(0, 2 * math.pi)
        length = self.rng.uniform(0.15, 0.7) * max(height, width)
        for _ in range(int(self.rng.integers(3, 8))):
            heading += self.rng.normal(0, 0.4)
            step = length / 6
            points.append(points[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        thickness = int(self.rng.integers(1, max(2, round(min(height, width) / 64)) + 1))
        cv2.polylines(mask, [np.array(points, np.int32)], False, 1, thickness)
        value = self.rng.uniform(0.0, 0.15) if self.rng.uniform() < 0.7 else self.rng.uniform(0.8, 1.0)
        alpha = mask.astype(np.float32)[..., None] * self.rng.uniform(0.6, 1.0)
        return image * (1 - alpha) + value * alpha, mask

    def _spot(self, image: np.ndarray):
        height, width = image.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        for _ in range(int(self.rng.integers(1, 4))):
            center = (int(self.rng.uniform(0, width)), int(self.rng.uniform(0, height)))
            axes = tuple(int(v) for v in self.rng.uniform(1.5, max(3, min(height, width) / 16), 2))
            cv2.ellipse(mask, center, axes, self.rng.uniform(0, 180), 0, 360, 1, -1)
        value = self.rng.uniform(0.0, 0.2) if self.rng.uniform() < 0.7 else self.rng.uniform(0.75, 1.0)
        alpha = self._soft(mask.astype(np.float32)) * self.rng.uniform(0.6, 1.0)
        return image * (1 - alpha) + value * alpha, mask

    def _chip(self, image: np.ndarray):
        height, width = image.shape[:2]
        mask = self._mask()
        edge = int(self.rng.integers(4))
        band = np.zeros((height, width), np.float32)
        depth = int(self.rng.uniform(0.05, 0.3) * (height if edge < 2 else width))
        if edge == 0:
            band[:depth] = 1
        elif edge == 1:
            band[-depth:] = 1
        elif edge == 2:
            band[:, :depth] = 1
        else:
            band[:, -depth:] = 1
        mask = np.maximum(mask, 0) * band
        if mask.sum() < 4:
            mask = band
        value = self.rng.uniform(0.0, 0.12) if self.rng.uniform() < 0.8 else self.rng.uniform(0.8, 1.0)
        alpha = mask[..., None]
        return image * (1 - alpha) + value * alpha, mask
