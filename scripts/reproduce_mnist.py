"""Check the shipped mnist-1 bundle the way the study did, through `lineguard score` only.

Writes the 1,135 test "1"s and 1,009 test "9"s of mnist.npz as PNG files, scores them with
`lineguard score` (the int8 model, as the device runs it), and prints image AUROC and the best F1
with "normal" as the positive class. Usage:

    python scripts/reproduce_mnist.py PATH/TO/mnist.npz [--model models/mnist-1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.metrics import best_f1_threshold  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", type=Path)
    parser.add_argument("--model", type=Path, default=Path("models/mnist-1"))
    args = parser.parse_args()
    try:
        with np.load(args.npz) as data:
            images, labels = data["x_test"], data["y_test"]
    except (OSError, ValueError, KeyError) as exc:
        parser.exit(65, f"{args.npz}: not a readable MNIST .npz with x_test and y_test ({exc})\n")
    keep = np.flatnonzero((labels == 1) | (labels == 9))
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in keep:
            path = Path(folder) / f"{i:05d}-{labels[i]}.png"
            cv2.imwrite(str(path), images[i])
            paths.append(str(path))
        out = subprocess.run([sys.executable, "-m", "edge.cli", "score", "--model", str(args.model), *paths],
                             capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    scores = np.array([line["score"] for line in lines])
    anomalous = np.array([line["image"].endswith("-9.png") for line in lines], dtype=int)
    threshold, best = best_f1_threshold(scores, anomalous)
    shipped = lines[0]["threshold"]
    fails = scores >= shipped
    agree = np.mean(fails == (scores >= threshold))
    print(json.dumps({
        "images": len(lines), "normal_1s": int((anomalous == 0).sum()), "anomalous_9s": int(anomalous.sum()),
        "image_auroc": round(float(roc_auc_score(anomalous, scores)), 5),
        "best_f1": round(best["f1"], 5), "precision": round(best["precision"], 5), "recall": round(best["recall"], 5),
        "best_f1_threshold": round(threshold, 3), "shipped_threshold": round(shipped, 3),
        "verdicts_at_shipped_threshold_equal_best_f1_verdicts": float(agree),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
