"""`lineguard history`: the station's verdict history (storage.dir/history.sqlite3), read-only, also while the
station runs."""
from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from pathlib import Path

from edge.exitcodes import EX_CONFIG, EX_DATAERR, EX_IOERR, EX_OK

FIELDS = ("seq", "ts", "part_id", "image", "score", "threshold", "verdict", "reason", "regions", "model_sha",
          "evidence", "feedback")
TABLE = (("seq", 9), ("ts", 24), ("verdict", 10), ("score", 11), ("threshold", 11), ("part_id", 12),
         ("regions", 7), ("evidence", 0))


def add_history_command(sub) -> None:
    p = sub.add_parser("history", help="list the verdicts kept in the station's history, or sum them up",
                       description="Read storage.dir/history.sqlite3 read-only (also while the station runs): "
                                   "every verdict with seq, time, part id, score, threshold, reason, regions, "
                                   "model sha, evidence file and feedback file. --summary sums them up: counts "
                                   "per verdict, fail rate, the cells failed parts' regions fell in most.")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default ./config.yaml)")
    p.add_argument("--since", metavar="ISO", help="from this time on, e.g. 2026-05-01T06:00:00+02:00")
    p.add_argument("--until", metavar="ISO", help="up to this time")
    p.add_argument("--verdict", choices=("pass", "fail", "unscorable"), help="only verdicts of this kind")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default table)")
    p.add_argument("--summary", action="store_true", help="counts per verdict, fail rate and top defect regions")
    p.set_defaults(handler=cmd_history)


def _epoch(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option}: not an ISO 8601 time: {text[:40]!r}") from None
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()  # naive: local time


def cmd_history(args) -> int:
    from edge.config.errors import ConfigError
    from edge.config.load import load_config
    from edge.publish.history_read import HistoryUnavailable, history_path, public, read_rows, summary

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EX_CONFIG
    try:
        since, until = _epoch(args.since, "--since"), _epoch(args.until, "--until")
    except ValueError as exc:
        print(f"lineguard history: {exc}", file=sys.stderr)
        return EX_DATAERR
    try:
        rows = read_rows(history_path(cfg.storage.dir), since, until, args.verdict)
    except HistoryUnavailable as exc:
        print(f"lineguard history: {exc}", file=sys.stderr)
        return EX_IOERR
    if args.summary:
        _print_summary(summary(rows), args.format)
    else:
        _print_rows([public(row) for row in rows], args.format)
    return EX_OK


def _print_rows(rows: list[dict], fmt: str) -> None:
    out = sys.stdout
    if fmt == "json":
        json.dump(rows, out, indent=1)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "regions": json.dumps(row["regions"])})
    else:
        out.write("  ".join(name.ljust(width) for name, width in TABLE).rstrip() + "\n")
        for row in rows:
            cells = {**row, "regions": len(row["regions"]),
                     "score": _number(row["score"]), "threshold": _number(row["threshold"])}
            out.write("  ".join(str(cells[name] if cells[name] is not None else "-").ljust(width)
                                for name, width in TABLE).rstrip() + "\n")


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _print_summary(data: dict, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(data, indent=1))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["verdicts", "pass", "fail", "unscorable", "fail_rate", "first", "last"])
        writer.writerow([data[key] for key in ("verdicts", "pass", "fail", "unscorable", "fail_rate", "first",
                                                 "last")])
        return
    rate = "-" if data["fail_rate"] is None else f"{data['fail_rate'] * 100:.2f} %"
    print(f"verdicts    {data['verdicts']}  ({data['first'] or '-'} .. {data['last'] or '-'})")
    print(f"pass        {data['pass']}\nfail        {data['fail']}\nunscorable  {data['unscorable']}")
    print(f"fail rate   {rate}  (of the scored parts)")
    if data["top_regions"]:
        print("top defect regions (cells of the source frame, by failed parts' region centres):")
        for cell in data["top_regions"]:
            print(f"  x {cell['x']}-{cell['x'] + cell['w']}, y {cell['y']}-{cell['y'] + cell['h']}: "
                  f"{cell['fails']} fail(s)")
