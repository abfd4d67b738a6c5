"""The verdict history: every verdict in storage.dir/history.sqlite3, across restarts, bounded by age and size,
read by `lineguard history` and the page's Review list; a full disk or a damaged file only makes it unavailable.

Real daemon processes, a real Mosquitto, a real tmpfs and real SQLite files.
"""
from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from edge.publish.history import FILE_NAME, History, row_of
from edge.publish.history_read import read_rows, summary
from tests.support.daemon_harness import BASE, DaemonProcess, replay_to_end, results, sample_folder, unique_in_order, \
    write_config
from tests.support.helpers import run_cli, wait_until
from tests.test_faults import fill, small_disk  # noqa: F401 (small_disk is a fixture)
from tests.test_station_page import browser  # noqa: F401 (a fixture)

DAY_S = 86400.0


def history_json(config: Path, *args: str) -> list[dict] | dict:
    out = run_cli("history", "--config", config, "--format", "json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def message(seq: int, t: float, verdict: str = "pass", regions=()) -> dict:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))
    return {"id": f"{seq:032x}", "seq": seq, "ts": ts, "device_id": "d", "image": f"{seq}.png", "part_id": None,
            "score": 0.5, "score_norm": 0.5, "threshold": 1.0, "verdict": verdict, "reason": None,
            "regions": list(regions), "model": {"name": "m", "sha256": "ab" * 32}, "latency_ms": 1.0}


def test_every_verdict_is_listed_once_across_a_restart(tmp_path, broker, make_collector):
    collector = make_collector(broker, [f"{BASE}/result"])
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path))
    replay_to_end(config, collector)
    first = history_json(config)
    assert [row["seq"] for row in first] == list(range(1, 21))
    replay_to_end(config, collector)  # a restart: the same 20 frames again, seq 21..40
    rows = history_json(config)
    assert [row["seq"] for row in rows] == list(range(1, 41))
    published = {m["seq"]: m for m in unique_in_order(results(collector))}
    for row in rows:  # what history keeps is what was published
        sent = published[row["seq"]]
        assert (row["ts"], row["score"], row["verdict"], row["threshold"], row["regions"], row["model_sha"]) == \
            (sent["ts"], sent["score"], sent["verdict"], sent["threshold"], sent["regions"], sent["model"]["sha256"])
        assert (row["evidence"] is not None) == (sent["verdict"] == "fail")  # storage.evidence: fail
    fails = history_json(config, "--verdict", "fail")
    assert fails and {row["verdict"] for row in fails} == {"fail"}
    later = [row["seq"] for row in rows if row["ts"] >= rows[25]["ts"]]  # frames may share a millisecond
    assert [row["seq"] for row in history_json(config, "--since", rows[25]["ts"])] == later
    assert 26 in later and 1 not in later and later[-1] == 40
    totals = history_json(config, "--summary")
    assert (totals["verdicts"], totals["pass"] + totals["fail"] + totals["unscorable"]) == (40, 40)
    assert totals["fail"] == len(fails) and totals["fail_rate"] == pytest.approx(len(fails) / (40 - totals["unscorable"]))
    table = run_cli("history", "--config", config, "--summary")
    assert table.returncode == 0 and "fail rate" in table.stdout, table.stderr


def test_retention_removes_the_oldest_first_by_age_and_by_size(tmp_path):
    now = time.time()
    history = History(tmp_path, retention_s=30 * DAY_S, max_bytes=10 ** 9)
    old = [row_of(message(seq, now - (40 - seq) * DAY_S)) for seq in range(1, 21)]  # 39 .. 20 days old
    assert history.write(old, now=now)
    kept = [row["seq"] for row in read_rows(tmp_path / FILE_NAME)]
    assert kept == list(range(11, 21)), kept  # the ten older than 30 days are gone
    assert history.write([row_of(message(seq, now - 10.0)) for seq in range(21, 621)], now=now)
    history.max_bytes = history.used_bytes() * 6 // 10
    history.prune(now)
    smaller = [row["seq"] for row in read_rows(tmp_path / FILE_NAME)]
    assert 100 < len(smaller) < 610 and smaller == list(range(621 - len(smaller), 621))  # the newest remain
    assert history.used_bytes() <= history.max_bytes
    history.close()


def test_summary_counts_verdicts_and_where_failed_parts_fail(tmp_path):
    region = {"x": 10, "y": 10, "w": 4, "h": 4, "area_px": 4, "peak": 1.0, "heatmap": {"x": 1, "y": 1, "w": 1, "h": 1}}
    now = time.time()
    history = History(tmp_path, 30 * DAY_S, 10 ** 9)
    assert history.write([row_of(message(1, now, "fail", [region])), row_of(message(2, now, "fail", [region])),
                          row_of(message(3, now)), row_of(message(4, now, "unscorable"))], now=now)
    history.close()
    totals = summary(read_rows(tmp_path / FILE_NAME))
    assert (totals["pass"], totals["fail"], totals["unscorable"], totals["fail_rate"]) == (1, 2, 1, pytest.approx(2 / 3))
    assert totals["top_regions"] == [{"x": 0, "y": 0, "w": 32, "h": 32, "fails": 2}]


def latest_stats(collector) -> dict:
    payloads = collector.payloads(f"{BASE}/stats")
    return json.loads(payloads[-1]) if payloads else {}


def warnings_of(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and "history unavailable" in line]


def test_a_full_disk_makes_history_unavailable_and_inspection_goes_on(tmp_path, broker, make_collector, small_disk):
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/stats"])
    state = small_disk / "state"
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), mqtt={"heatmap": "never"},
                          source={"loop": True, "fps": 20},
                          storage={"dir": str(state), "evidence": "never", "reserve_mb": 6})
    daemon = DaemonProcess(config)
    try:
        assert wait_until(lambda: latest_stats(collector).get("history", {}).get("written", 0) >= 10, 30), \
            daemon.log()[-3000:]
        assert latest_stats(collector)["history"]["available"] is True
        fill(small_disk, leave_bytes=3 * 1024 * 1024)  # below the 6 MB reserve: the outbox alone may use it
        assert wait_until(lambda: latest_stats(collector).get("history", {}).get("available") is False, 30), \
            daemon.log()[-3000:]
        seen = len(unique_in_order(results(collector)))
        assert wait_until(lambda: len(unique_in_order(results(collector))) >= seen + 40, 30), daemon.log()[-3000:]
        history = latest_stats(collector)["history"]
        assert "storage.reserve_mb" in history["reason"], history
        assert daemon.process.poll() is None, daemon.log()[-3000:]
    finally:
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(60)
    assert code == 0, daemon.log()[-3000:]
    assert len(warnings_of(daemon.log())) == 1, warnings_of(daemon.log())
    seqs = sorted(m["seq"] for m in unique_in_order(results(collector)))
    assert seqs == list(range(1, len(seqs) + 1))  # every verdict published, none skipped


def test_a_damaged_history_file_is_reported_and_inspection_goes_on(tmp_path, broker, make_collector):
    collector = make_collector(broker, [f"{BASE}/result", f"{BASE}/stats"])
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path))
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(b"not a database, " * 512)
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 0, daemon.log()[-3000:]
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= 20, 10)  # still arriving
    assert [m["seq"] for m in unique_in_order(results(collector))] == list(range(1, 21))
    assert wait_until(lambda: "history" in latest_stats(collector), 10)
    history = latest_stats(collector)["history"]
    assert history["available"] is False and "not a database" in history["reason"], history
    assert len(warnings_of(daemon.log())) == 1, daemon.log()[-3000:]
    out = run_cli("history", "--config", config)
    assert out.returncode != 0 and "history" in out.stderr


def test_the_review_list_keeps_the_verdicts_from_before_a_restart(tmp_path, broker, make_collector, browser):
    from selenium.webdriver.common.by import By

    from tests.test_station_page import open_tab, page_config, poll, review_seqs, start_daemon

    collector = make_collector(broker, [f"{BASE}/result"])
    config, url = page_config(tmp_path, broker.port, web={"recent_verdicts": 10})
    replay_to_end(config, collector)  # the first run: seq 1..20, then it exits
    daemon = start_daemon(config, url, "--keep-serving")  # the second: seq 21..40, and the page stays up
    try:
        assert wait_until(lambda: len(unique_in_order(results(collector))) >= 40, 30), daemon.log()[-3000:]
        assert wait_until(lambda: review_seqs(url, filter="all") == set(range(1, 41)), 10), \
            sorted(review_seqs(url, filter="all"))
        with urllib.request.urlopen(f"{url}api/review?filter=all&limit=3", timeout=5) as response:
            newest = json.loads(response.read())["verdicts"]
        assert [v["seq"] for v in newest] == [40, 39, 38] and {"held", "evidence", "score", "ts"} <= set(newest[0])
        fails = review_seqs(url, filter="fail")
        assert fails and fails & set(range(1, 21))  # failed parts from before the restart are still there
        with urllib.request.urlopen(f"{url}api/state", timeout=5) as response:
            assert json.loads(response.read())["history"]["available"] is True
        # What a person sees after the restart: the Review tab lists the cards of both runs.
        browser.get(url)
        open_tab(browser, "review")
        browser.find_element(By.CSS_SELECTOR, "#review-filter option[value='all']").click()
        shown = lambda: {int(c.get_attribute("data-seq"))  # noqa: E731
                         for c in browser.find_elements(By.CSS_SELECTOR, "#review-list .item")}
        assert poll(lambda: shown() == set(range(1, 41))), sorted(shown())
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()[-3000:]
