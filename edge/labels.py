"""The closed vocabulary of feedback labels, checked in one place for MQTT, the station page and the CLI.

A labelled frame becomes a file in the MVTec AD layout (train/good, test/<defect>), which the trainer reads
as it is: a defect class named like the good class or like a folder of the layout would file a defect as a
good part, or outside test/. So a defect class is a plain folder name that is none of RESERVED, in any case
(a case-insensitive file system would merge "Good" with "good").
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath

LABELS = ("good", "defect")
DEFAULT_DEFECT = "defect"
DEFECT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED = ("good", "train", "test", "ground_truth", "validation")  # the MVTec AD layout's own names


def defect_problem(defect: object) -> str | None:
    """Why ``defect`` cannot name a defect class folder; None when it can."""
    if not isinstance(defect, str) or not DEFECT_PATTERN.fullmatch(defect):
        return (f"defect {str(defect)[:64]!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit")
    if defect.lower() in RESERVED:
        return f"defect {defect!r} is a reserved folder name ({', '.join(RESERVED)}, in any case)"
    return None


def label_folder(label: str, defect: str = DEFAULT_DEFECT) -> PurePosixPath:
    """Where a labelled frame goes: train/good for a good part, test/<defect> for a missed defect.
    ValueError (one line) for a label or defect outside the vocabulary."""
    if label not in LABELS:
        raise ValueError(f"label {str(label)[:64]!r} must be one of {', '.join(LABELS)}")
    problem = defect_problem(defect)
    if problem is not None:
        raise ValueError(problem)
    return PurePosixPath("train/good" if label == "good" else f"test/{defect}")


def class_of(label: str, defect: str = DEFAULT_DEFECT) -> str:
    """The class a label files a frame under: 'good', or the defect's name."""
    return "good" if label == "good" else defect
