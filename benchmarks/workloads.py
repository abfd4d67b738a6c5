"""What the benchmarks feed the daemon: conv AE bundles trained on synthetic parts, and frame folders.

The conv bundles are trained once with `lineguard train` on a few synthetic 256x256-style parts for a few steps
(speed does not depend on how well a model reconstructs) and cached under benchmarks/models/.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import MODELS_DIR, PYTHON, ROOT, log, scratch_dir

MNIST_BUNDLE = ROOT / "models" / "mnist-1"
MNIST_FIXTURE = ROOT / "tests" / "fixtures" / "mnist-small.npz"
DEFECT_EVERY = 20  # one frame in 20 shows a defect: 5 % of parts fail, as on a line with a real problem
DEFECT_OFFSET = 7
TRAIN_IMAGES = 12
TRAIN_STEPS = 5
TRAIN_BATCH = 4
THRESHOLD_SAMPLE_FRAMES = 40
FAIL_QUANTILE = 100.0 - 100.0 / DEFECT_EVERY  # threshold at the 95th percentile of the frames' scores
THRESHOLDS_FILE = "thresholds.json"


def conv_bundle(size: int) -> Path:
    """The cached `--model conv --size SIZE --color gray` int8 bundle; trained on first use (20-60 s)."""
    bundle = MODELS_DIR / f"conv-{size}-gray"
    if (bundle / "model.json").is_file():
        return bundle
    sys.path.insert(0, str(ROOT))
    from tests.support.helpers import make_mvtec

    log("training the %dx%d conv bundle once (cached in %s)", size, size, bundle.relative_to(ROOT))
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with scratch_dir("train") as tmp:
        data = make_mvtec(tmp / "parts", n_train=TRAIN_IMAGES, n_good=2, n_bad=2, size=size)
        command = [PYTHON, "-m", "edge.cli", "train", "--data", str(data), "--out", str(bundle), "--model", "conv",
                   "--size", str(size), "--color", "gray", "--steps", str(TRAIN_STEPS),
                   "--batch-size", str(TRAIN_BATCH), "--threads", "2"]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"training the {size}x{size} benchmark bundle failed:\n{out.stderr[-3000:]}")
    return bundle


def part_frames(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """COUNT synthetic textured parts as SIZExSIZE gray PNGs; every DEFECT_EVERY-th one has a painted defect."""
    sys.path.insert(0, str(ROOT))
    from tests.support.helpers import paint_defect, textured_part

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = textured_part(rng, size)
        if i % DEFECT_EVERY == DEFECT_OFFSET:
            image, _ = paint_defect(image, rng)
        cv2.imwrite(str(folder / f"part-{i:05d}.png"), image)
    return folder


def mnist_frames(folder: Path, count: int) -> Path:
    """COUNT 28x28 PNGs of real MNIST digits: 1s (good parts) and, every DEFECT_EVERY-th frame, a 9."""
    data = np.load(MNIST_FIXTURE)
    images = np.concatenate([data["x_train"], data["x_test"]])
    labels = np.concatenate([data["y_train"], data["y_test"]])
    ones, nines = images[labels == 1], images[labels == 9]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        defect = i % DEFECT_EVERY == DEFECT_OFFSET
        image = nines[i % len(nines)] if defect else ones[i % len(ones)]
        cv2.imwrite(str(folder / f"digit-{i:05d}-{9 if defect else 1}.png"), image)
    return folder


def fail_threshold(bundle: Path, frames: Path) -> float:
    """A threshold at which about 5 % of the synthetic parts fail, so the evidence and heatmap path runs
    as often as on a line with a real problem. The few-step benchmark models are not calibrated for that."""
    cache_path = MODELS_DIR / THRESHOLDS_FILE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    from edge.core.bundle import load_bundle

    key = f"{bundle.name}:{load_bundle(bundle).model_sha256[:16]}"
    if key in cache:
        return float(cache[key])
    from edge.core.inspector import Inspector

    inspector = Inspector(bundle, threads=1)
    files = sorted(frames.glob("*.png"))[:THRESHOLD_SAMPLE_FRAMES]
    scores = [inspector.inspect_file(path).score for path in files]
    threshold = float(np.percentile(scores, FAIL_QUANTILE))
    cache[key] = threshold
    cache_path.write_text(json.dumps(cache, indent=2))
    return threshold
