"""Lay out the magnetic-tile defect set (Huang et al. 2020) in the MVTec AD folder layout.

Split, fixed seed: 80 % of MT_Free for training, the other 20 % plus every defect image for testing.
Files are symlinked, not copied. Usage:

    python scripts/magnetic_tile_split.py SOURCE_DIR OUT_DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TRAIN_FRACTION = 0.8
DEFECT_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source.resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder holding MT_Free/ and the MT_<defect>/ folders")
    parser.add_argument("out", type=Path, help="folder to create in the MVTec AD layout")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    free = sorted((args.source / "MT_Free" / "Imgs").glob("*.jpg"))
    if not free:
        print(f"{args.source / 'MT_Free' / 'Imgs'}: no .jpg images; is this the magnetic-tile folder?", file=sys.stderr)
        return 66
    order = np.random.default_rng(args.seed).permutation(len(free))
    n_train = int(round(len(free) * TRAIN_FRACTION))
    for rank, index in enumerate(order):
        split = "train" if rank < n_train else "test"
        link(free[index], args.out / split / "good" / free[index].name)
    for defect in DEFECT_CLASSES:
        name = defect.removeprefix("MT_").lower()
        for image in sorted((args.source / defect / "Imgs").glob("*.jpg")):
            link(image, args.out / "test" / name / image.name)
            link(image.with_suffix(".png"), args.out / "ground_truth" / name / f"{image.stem}_mask.png")
    print(f"{args.out}: {n_train} train/good, {len(free) - n_train} test/good, defects from {len(DEFECT_CLASSES)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
