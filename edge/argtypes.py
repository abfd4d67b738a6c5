"""argparse types shared by the device's and the trainer's commands: each error states what was expected."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

MIN_SIDE_PX = 8  # smaller inputs leave a model nothing to learn from


def number(kind: type, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """An argparse type for a number in a range, with an error that states the range."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    allowed = f"{left}{low:g}, {'inf' if high is None else f'{high:g}'}{right}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = number(int, 1)
FRACTION = number(float, 0.0, 1.0, low_open=True, high_open=True)


def size(text: str) -> tuple[int, int]:
    """SIZE or HEIGHTxWIDTH, in pixels."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < MIN_SIDE_PX:
        raise argparse.ArgumentTypeError(
            f"expected SIZE or HEIGHTxWIDTH of at least {MIN_SIDE_PX} pixels, got {text!r}")
    return (values[0], values[-1])


def roi(text: str) -> tuple[int, int, int, int]:
    """X,Y,W,H in pixels, with W and H > 0."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or values[2] == 0 or values[3] == 0:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H with W and H > 0, got {text!r}")
    return values  # type: ignore[return-value]


def polygons(text: str) -> list:
    """A JSON list of polygons, each a list of [x, y] points, inline or in a .json file."""
    try:
        data = json.loads(Path(text).read_text() if text.endswith(".json") else text)
        shapes = [[(float(x), float(y)) for x, y in polygon] for polygon in data]
    except (OSError, ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"expected polygons like [[[0,0],[40,0],[40,30]]]: {exc}") from None
    if any(len(p) < 3 for p in shapes):
        raise argparse.ArgumentTypeError("each polygon needs at least 3 points")
    return shapes
