"""Run the benchmarks and write benchmarks/results/latest.json and latest.md.

    python -m benchmarks.run --all      # every case (1-5, 7-11), about 15 minutes on 2 cores (make bench)
    python -m benchmarks.run --quick    # case 1 only, at most 60 s (make bench-quick)
    python -m benchmarks.run --case 3   # one case
    python -m benchmarks.run --report   # rewrite latest.md from latest.json and soak.json, measuring nothing

Results are merged into latest.json key by key, so a quick run refreshes pipeline_efficiency_256 and keeps the
other figures of the last full run; each case records when it was measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.common import RESULTS_DIR, log, machine
from edge.core.files import write_bytes_atomic, write_json_atomic
from benchmarks.report import markdown

LATEST_JSON = RESULTS_DIR / "latest.json"
LATEST_MD = RESULTS_DIR / "latest.md"
CASES = ("1", "2", "3", "4", "5", "7", "8", "9", "10", "11")  # 6 is the soak (make soak)


def run_case(case: str, mode: str, results: dict) -> dict:
    if case == "1":
        from benchmarks import pipeline
        return pipeline.run(mode)
    if case == "2":
        from benchmarks import mnist_throughput
        return mnist_throughput.run()
    if case == "3":
        from benchmarks import keras_compare
        return keras_compare.run()
    if case == "4":
        from benchmarks import footprint
        return footprint.run(results)
    if case == "7":
        from benchmarks import trigger_latency
        return trigger_latency.run()
    if case == "8":
        from benchmarks import station_page
        return station_page.run(mode)
    if case == "11":
        from benchmarks import pipeline
        return pipeline.run_shadow(mode)
    if case == "10":
        from benchmarks import pipeline
        return pipeline.run_plant(mode)
    if case == "9":
        from benchmarks import realpart
        return realpart.run()
    from benchmarks import pi_estimate
    return pi_estimate.run(results)


def load_latest() -> dict:
    try:
        return json.loads(LATEST_JSON.read_text())
    except (OSError, ValueError):
        return {}


def save(results: dict) -> None:
    write_json_atomic(LATEST_JSON, results)
    write_bytes_atomic(LATEST_MD, markdown(results).encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true", help="every case (make bench)")
    group.add_argument("--quick", action="store_true", help="case 1 only, fewer pairs (make bench-quick)")
    group.add_argument("--case", choices=CASES, action="append", help="one case; may be repeated")
    group.add_argument("--report", action="store_true", help="only rewrite latest.md")
    args = parser.parse_args(argv)
    results = load_latest()
    if args.report:
        save(results)
        print(markdown(results))
        return 0
    cases = ["1"] if args.quick else list(CASES) if args.all else args.case
    mode = "quick" if args.quick else "full"
    started = time.monotonic()
    measuring = bool(set(cases) - {"5"})  # case 5 only computes from earlier figures
    if measuring:
        results["machine"] = machine()
    for case in cases:
        case_started = time.monotonic()
        figures = run_case(case, mode, results)
        results.update(figures)
        results.setdefault("measured_at", {})[f"case_{case}"] = {
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "mode": mode,
            "seconds": round(time.monotonic() - case_started, 1),
        }
        save(results)
        log("case %s done in %.0f s", case, time.monotonic() - case_started)
    if measuring:
        results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    save(results)
    log("all done in %.0f s: %s", time.monotonic() - started, LATEST_JSON)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
