"""Shared test helpers: paths, a tiny trained bundle, synthetic textured parts with painted defects."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
MNIST_SMALL = FIXTURES / "mnist-small.npz"
MNIST_BUNDLE = ROOT / "models" / "mnist-1"
SAMPLES = ROOT / "samples" / "mnist"
LINEGUARD = [sys.executable, "-m", "edge.cli"]


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; its last value."""
    pause = threading.Event()
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if condition():
            return True
        pause.wait(poll_s)
    return condition()


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `lineguard ARGS` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*LINEGUARD, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=full_env)


def textured_part(rng: np.random.Generator, size: int = 64, color: bool = False) -> np.ndarray:
    """A good part: smooth shading plus fine grinding-like texture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.45 + 0.1 * np.sin(2 * np.pi * (xx * 2 + rng.uniform())) + 0.05 * yy
    texture = cv2.GaussianBlur(rng.normal(0, 0.06, (size, size)), (0, 0), 1.0)
    gray = np.clip(base + texture, 0, 1)
    image = (gray * 255).astype(np.uint8)
    if color:
        image = cv2.merge([image, (image * 0.8).astype(np.uint8), (image * 0.6).astype(np.uint8)])
    return image


def paint_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark scratch or bright blob; returns the image and its 0/255 mask."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    size = image.shape[0]
    if rng.uniform() < 0.5:
        p1 = tuple(int(v) for v in rng.integers(5, size - 5, 2))
        p2 = tuple(int(v) for v in rng.integers(5, size - 5, 2))
        cv2.line(mask, p1, p2, 255, 3)
        value = 20
    else:
        center = tuple(int(v) for v in rng.integers(10, size - 10, 2))
        cv2.circle(mask, center, int(rng.integers(4, 8)), 255, -1)
        value = 240
    out[mask > 0] = value
    return out, mask


def make_mvtec(root: Path, n_train: int = 40, n_good: int = 8, n_bad: int = 8, size: int = 64, color: bool = False,
               seed: int = 0) -> Path:
    """A small MVTec AD-layout data set of synthetic textured parts with painted defects and masks."""
    rng = np.random.default_rng(seed)
    for folder in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / f"train/good/{i:03d}.png"), textured_part(rng, size, color))
    for i in range(n_good):
        cv2.imwrite(str(root / f"test/good/{i:03d}.png"), textured_part(rng, size, color))
    for i in range(n_bad):
        image, mask = paint_defect(textured_part(rng, size, color), rng)
        cv2.imwrite(str(root / f"test/scratch/{i:03d}.png"), image)
        cv2.imwrite(str(root / f"ground_truth/scratch/{i:03d}_mask.png"), mask)
    return root


def evaluated_digits_as_png(report: Path, out: Path, count: int = 5) -> tuple[list[dict], list[Path]]:
    """The first and last ``count`` rows of an MNIST_SMALL evaluation's scores.csv, and those test digits written
    as PNG files, for comparing `lineguard score` with what `lineguard evaluate` computed."""
    import csv

    rows = list(csv.DictReader((report / "scores.csv").open()))
    with np.load(MNIST_SMALL) as data:
        x_test = data["x_test"]
    picks = rows[:count] + rows[-count:]
    paths = []
    for k, row in enumerate(picks):
        path = out / f"{k:02d}.png"
        cv2.imwrite(str(path), x_test[int(row["image"].rsplit("/", 1)[1])])  # names are test/<class>/<index>
        paths.append(path)
    return picks, paths
