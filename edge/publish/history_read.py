"""Reading the verdict history (edge.publish.history) read-only, while the station writes it: for the page's
Review tab and `lineguard history`. WAL readers never block the writer."""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from edge.publish.history import FILE_NAME

VERDICTS = ("pass", "fail", "unscorable")
REGION_CELL_PX = 32  # top defect regions are counted per cell of this size (by the region's centre)
TOP_REGIONS = 5


class HistoryUnavailable(OSError):
    """The history file is missing or cannot be read."""


def history_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / FILE_NAME


def read_rows(path: Path, since: float | None = None, until: float | None = None, verdict: str | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
    """Verdicts in the time range (seconds since the epoch, inclusive) with that verdict, oldest first (or newest
    first, up to ``limit``)."""
    if not Path(path).is_file():
        raise HistoryUnavailable(f"no history at {path}")
    where, args = [], []
    for clause, value in (("t >= ?", since), ("t <= ?", until), ("verdict = ?", verdict)):
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = ("SELECT seq, ts, part_id, image, score, threshold, verdict, reason, regions, model_sha, evidence, "
           "feedback, message FROM verdicts" + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY id {'DESC' if newest_first else 'ASC'}" + (" LIMIT ?" if limit is not None else ""))
    if limit is not None:
        args.append(limit)
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute(sql, args).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise HistoryUnavailable(f"cannot read {path}: {exc}") from None
    return [{**dict(row), "regions": json.loads(row["regions"])} for row in rows]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A row as `lineguard history` prints it (without the stored message)."""
    return {key: value for key, value in row.items() if key != "message"}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per verdict, the fail rate of the scored parts, and where failed parts' regions were most often."""
    counts = Counter(row["verdict"] for row in rows)
    scored = counts["pass"] + counts["fail"]
    cells: Counter = Counter()
    for row in rows:
        if row["verdict"] == "fail":
            for region in row["regions"]:
                cx, cy = region["x"] + region["w"] // 2, region["y"] + region["h"] // 2
                cells[(cx // REGION_CELL_PX * REGION_CELL_PX, cy // REGION_CELL_PX * REGION_CELL_PX)] += 1
    return {
        "verdicts": len(rows), **{name: counts[name] for name in VERDICTS},
        "fail_rate": round(counts["fail"] / scored, 6) if scored else None,
        "first": rows[0]["ts"] if rows else None, "last": rows[-1]["ts"] if rows else None,
        "top_regions": [{"x": x, "y": y, "w": REGION_CELL_PX, "h": REGION_CELL_PX, "fails": n}
                        for (x, y), n in cells.most_common(TOP_REGIONS)],
    }
