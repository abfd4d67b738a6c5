"""The station page as a person uses it: headless Chromium against a real daemon on a folder replay, a real
Mosquitto broker, the bundled model. What the page shows is checked against what an MQTT subscriber received."""
from __future__ import annotations

import json
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from edge.threshold_store import THRESHOLD_FILE
from tests.support.broker import free_port
from tests.support.browser import screenshot, start_chromium
from tests.support.daemon_harness import BASE, DaemonProcess, results, sample_folder, unique_in_order, write_config
from tests.support.helpers import run_cli, wait_until
from tests.test_reload import CALIBRATED_THRESHOLD

WAIT_S = 30.0
# Pixel (x, y) inside the verdict banner the live picture carries at its top; RGB as the browser decodes it.
BANNER_PIXEL = (3, 3)
BANNER_RGB = {"fail": (255, 0, 0), "pass": (0, 180, 0)}
COLOR_TOLERANCE = 40
READ_BANNER_JS = """
const img = document.getElementById('live-image');
if (!img.complete || !img.naturalWidth) return null;
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d'); ctx.drawImage(img, 0, 0);
const p = ctx.getImageData(arguments[0], arguments[1], 1, 1).data;
return {rgb: [p[0], p[1], p[2]], verdict: img.dataset.verdict, name: document.getElementById('live-name').textContent,
        src: img.src, text: document.getElementById('live-verdict').textContent};
"""


STARTED: list[DaemonProcess] = []


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test():
    """A daemon that keeps serving after its replay must not outlive a test that failed half-way."""
    yield
    while STARTED:
        STARTED.pop().kill()


@pytest.fixture
def browser(tmp_path):
    driver = start_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def poll(condition, timeout_s: float = WAIT_S, pause_s: float = 0.1):
    """The first truthy value of ``condition`` within timeout_s (a page still changing may raise: try again)."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
            if value:
                return value
        except WebDriverException:
            if time.monotonic() > deadline_s:
                raise
        if time.monotonic() > deadline_s:
            return value
        time.sleep(pause_s)


def page_config(tmp_path: Path, broker_port: int | None, **sections) -> tuple[Path, str]:
    port = free_port()
    web = {"enabled": True, "port": port, **sections.pop("web", {})}
    config = write_config(tmp_path, broker_port, sample_folder(tmp_path), web=web, **sections)
    return config, f"http://127.0.0.1:{port}/"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=2) as response:
            return response.status == 200 and json.loads(response.read())["status"] == "inspecting"
    except OSError:
        return False


def start_daemon(config: Path, url: str, *args: str, env: dict | None = None) -> DaemonProcess:
    daemon = DaemonProcess(config, env, *args)
    STARTED.append(daemon)
    assert poll(lambda: healthy(url) or daemon.process.poll() is not None) and healthy(url), daemon.log()[-3000:]
    return daemon


def open_tab(browser, name: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f'.tab[data-tab="{name}"]').click()


def close_to(rgb, expected) -> bool:
    return all(abs(a - b) <= COLOR_TOLERANCE for a, b in zip(rgb, expected))


def expected_flips(verdicts: list[dict], candidate: float, running: float) -> set[int]:
    """Computed here from the scores the subscriber received, not from anything the page says."""
    return {v["seq"] for v in verdicts if v["verdict"] != "unscorable" and (v["score"] >= candidate) != (v["score"] >= running)}


def drag_threshold(browser, offset_px: int) -> tuple[float, int, set[int]]:
    """Drag the threshold slider; the candidate threshold, the flip count and the listed seqs the page shows."""
    slider = browser.find_element(By.ID, "threshold-slider")
    ActionChains(browser).click_and_hold(slider).move_by_offset(offset_px, 0).release().perform()
    value = browser.find_element(By.ID, "threshold-value")
    listed = {int(li.get_attribute("data-seq")) for li in browser.find_elements(By.CSS_SELECTOR, "#flip-list li")}
    return float(value.get_attribute("data-threshold")), int(browser.find_element(By.ID, "flip-count").text), listed


def review_verdicts(url: str, **query: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}api/review?{urllib.parse.urlencode(query)}", timeout=5) as response:
        return json.loads(response.read())["verdicts"]


def review_seqs(url: str, **query: str) -> set[int]:
    return {v["seq"] for v in review_verdicts(url, **query)}


def history_holds(url: str, seqs: set[int], with_evidence: set[int]) -> bool:
    """The history lists exactly these verdicts, and the evidence of those given is on disk (both are written on
    sink threads: a moment after the broker has the result)."""
    listed = {v["seq"]: v for v in review_verdicts(url, filter="all")}
    return set(listed) == seqs and all(listed[seq]["evidence"] for seq in with_evidence)


def running_threshold(url: str) -> float:
    with urllib.request.urlopen(url + "api/state", timeout=5) as response:
        return json.loads(response.read())["threshold"]


def test_live_view_review_feedback_and_threshold_in_a_real_browser(tmp_path, broker, make_collector, browser):
    config, url = page_config(tmp_path, broker.port, source={"fps": 2})
    frames = tmp_path / "frames"
    collector = make_collector(broker, [f"{BASE}/result"])
    daemon = start_daemon(config, url, "--keep-serving")
    browser.get(url)

    # Live view: the picture changes without a reload, and a known bad frame (a 9) shows the fail overlay.
    sources, banners = set(), {}
    def live_fail_seen():
        shown = browser.execute_script(READ_BANNER_JS, *BANNER_PIXEL)
        if shown:
            sources.add(shown["src"])
            verdict = next((v for v, rgb in BANNER_RGB.items() if close_to(shown["rgb"], rgb)), None)
            if verdict == shown["verdict"] == shown["text"].lower():
                banners[verdict] = shown
        return "fail" in banners and "digit9" in banners["fail"]["name"] and len(sources) >= 3
    assert poll(live_fail_seen), (sources, banners, daemon.log()[-2000:])
    screenshot(browser, tmp_path, "station-live.png")
    assert "pass" in banners and "digit1" in banners["pass"]["name"]

    assert daemon.wait_for_log("the station page stays up", WAIT_S), daemon.log()[-3000:]
    # The broker acknowledged every result; the subscriber may still be receiving them.
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= len(list(frames.glob("*.png"))),
                              WAIT_S)
    received = unique_in_order(results(collector))
    assert len(received) == len(list(frames.glob("*.png")))
    fails = {v["seq"] for v in received if v["verdict"] == "fail"}
    assert fails and len(fails) < len(received)

    # Review: exactly the fails the subscriber received, each with its evidence frame and heatmap. The history is
    # written on its own thread: it may hold the last verdict a moment after the broker does.
    assert wait_until(lambda: history_holds(url, {v["seq"] for v in received}, fails), WAIT_S)
    open_tab(browser, "review")
    items = lambda: browser.find_elements(By.CSS_SELECTOR, "#review-list .item")
    assert poll(lambda: len(items()) == len(fails))
    assert {int(item.get_attribute("data-seq")) for item in items()} == fails
    assert poll(lambda: all(img.get_property("naturalWidth") > 0
                            for img in browser.find_elements(By.CSS_SELECTOR, "#review-list img")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#review-list img")) == 2 * len(fails)
    screenshot(browser, tmp_path, "station-review.png")
    # The same list over the API, by filter and time range, against the subscriber's timestamps.
    middle, late = received[len(received) // 3]["ts"], received[2 * len(received) // 3]["ts"]
    in_range = {v["seq"] for v in received if middle <= v["ts"] <= late}  # ISO 8601 UTC, equal length: sortable
    assert review_seqs(url, filter="all") == {v["seq"] for v in received}
    assert review_seqs(url, filter="all", since=middle, until=late) == in_range
    assert review_seqs(url, filter="fail", since=middle, until=late) == in_range & fails
    assert review_seqs(url, filter="unscorable") == {v["seq"] for v in received if v["verdict"] == "unscorable"}

    # "Good part (false reject)": the frame as captured, lossless, into train/good with its metadata.
    first = items()[0]
    seq = int(first.get_attribute("data-seq"))
    first.find_element(By.CSS_SELECTOR, ".mark-good").click()
    assert poll(lambda: "train/good" in browser.find_element(By.ID, "review-message").text)
    [png] = (tmp_path / "state" / "feedback" / "train" / "good").glob(f"{seq:09d}-*.png")
    verdict = next(v for v in received if v["seq"] == seq)
    original = cv2.imread(str(frames / verdict["image"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), original)
    meta = json.loads(png.with_suffix(".json").read_text())
    assert (meta["seq"], meta["score"], meta["model"]["sha256"], meta["label"]) == \
        (seq, verdict["score"], verdict["model"]["sha256"], "good") and meta["labelled_ts"]

    # Threshold by eye: the flip count and list match what the stored scores say, wherever the slider is dragged.
    open_tab(browser, "threshold")
    assert poll(lambda: browser.find_element(By.ID, "threshold-current").text != "-")
    with urllib.request.urlopen(url + "api/state", timeout=5) as response:
        fitness = json.loads(response.read())["fitness"]
    assert fitness["text"] and browser.find_element(By.ID, "threshold-fitness").text == fitness["text"]
    checked_with_flips = None
    for offset in (-60, 60, -150, 150, -30, 30):
        candidate, count, listed = drag_threshold(browser, offset)
        flips = expected_flips(received, candidate, CALIBRATED_THRESHOLD)
        assert (count, listed) == (len(flips), flips), (offset, candidate)
        if flips and checked_with_flips is None:
            checked_with_flips = candidate
            screenshot(browser, tmp_path, "station-threshold.png")
    assert checked_with_flips is not None, "no drag position flipped any stored part"

    # Applying it goes through the command path, is stored, and survives a reload.
    drag_threshold(browser, 0)
    candidate, _, _ = drag_threshold(browser, -60 if checked_with_flips < CALIBRATED_THRESHOLD else 60)
    browser.find_element(By.ID, "threshold-apply").click()
    assert poll(lambda: "->" in browser.find_element(By.ID, "threshold-message").text)
    assert running_threshold(url) == candidate
    assert json.loads((tmp_path / "state" / THRESHOLD_FILE).read_text())["threshold"] == candidate
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_for_log("reloaded:", WAIT_S)
    browser.refresh()
    open_tab(browser, "threshold")
    assert poll(lambda: browser.find_element(By.ID, "threshold-current").text == f"{candidate:.6g}"[:7] or
                float(browser.find_element(By.ID, "threshold-current").text) == pytest.approx(candidate, rel=1e-5))
    assert running_threshold(url) == candidate
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_an_applied_threshold_changes_the_next_verdicts_and_survives_a_restart(tmp_path, broker, make_collector,
                                                                               browser):
    config, url = page_config(tmp_path, broker.port, source={"fps": 8, "loop": True}, mqtt={"heatmap": "never"})
    collector = make_collector(broker, [f"{BASE}/result"])
    daemon = start_daemon(config, url)
    assert poll(lambda: len(unique_in_order(results(collector))) >= 20)
    browser.get(url)
    open_tab(browser, "threshold")
    assert poll(lambda: browser.find_element(By.ID, "threshold-current").text != "-")
    received = unique_in_order(results(collector))
    candidate = None
    for offset in (-60, 60, -150, 150):
        value, count, _ = drag_threshold(browser, offset)
        if count and expected_flips(received, value, CALIBRATED_THRESHOLD):
            candidate = value
            break
    assert candidate is not None
    browser.find_element(By.ID, "threshold-apply").click()
    assert poll(lambda: "->" in browser.find_element(By.ID, "threshold-message").text)

    # The next verdicts carry the new threshold and are judged by it; the ones before, by the old one.
    def judged_by_new():
        got = unique_in_order(results(collector))
        return len([v for v in got if v["threshold"] == candidate]) >= 20 and got
    got = poll(judged_by_new)
    assert got, daemon.log()[-2000:]
    thresholds = [v["threshold"] for v in got]
    switch = thresholds.index(candidate)
    assert set(thresholds[:switch]) == {CALIBRATED_THRESHOLD} and set(thresholds[switch:]) == {candidate}
    assert all((v["verdict"] == "fail") == (v["score"] >= candidate) for v in got[switch:] if v["verdict"] != "unscorable")
    assert any((v["score"] >= candidate) != (v["score"] >= CALIBRATED_THRESHOLD) for v in got[switch:])

    # A restart keeps it; "back to the bundle's threshold" clears it.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    collector.clear()
    daemon = start_daemon(config, url)
    assert poll(lambda: len(unique_in_order(results(collector))) >= 5)
    assert {v["threshold"] for v in unique_in_order(results(collector))} == {candidate}
    browser.refresh()
    open_tab(browser, "threshold")
    assert poll(lambda: browser.find_element(By.ID, "threshold-current").text not in ("-", ""))
    assert float(browser.find_element(By.ID, "threshold-current").text) == pytest.approx(candidate, rel=1e-5)
    browser.find_element(By.ID, "threshold-reset").click()
    assert poll(lambda: "bundle" in browser.find_element(By.ID, "threshold-message").text)
    assert running_threshold(url) == CALIBRATED_THRESHOLD and not (tmp_path / "state" / THRESHOLD_FILE).exists()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


PASSWORD = "correct horse battery staple"


def test_changes_need_the_password_a_csrf_token_and_the_page_origin(tmp_path, browser):
    import httpx

    config, url = page_config(tmp_path, None, source={"fps": 4, "loop": True}, mqtt={"enabled": False},
                              web={"require_password": "always"})
    daemon = start_daemon(config, url, env={"LINEGUARD_WEB_PASSWORD": PASSWORD})

    # In the browser: the page asks for the password, refuses a wrong one, and works with the right one.
    browser.get(url)
    assert poll(lambda: browser.find_element(By.ID, "login").is_displayed())
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.ID, "login-button").click()
    assert poll(lambda: browser.find_element(By.ID, "login-error").text == "wrong password")
    assert browser.find_element(By.ID, "live-seq").text == "-"  # nothing was shown
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()
    assert poll(lambda: not browser.find_element(By.ID, "login").is_displayed())
    assert poll(lambda: browser.find_element(By.ID, "live-seq").text not in ("-", ""))

    # Over HTTP, as another program or site would try it.
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("api/state").status_code == 401  # reads are not public unless web.public_reads says so
        csrf = client.get("api/session").json()["csrf"]
        change = {"threshold": 30.0}
        refused = client.post("api/threshold", json=change, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "password" in refused.json()["reason"]
        assert client.post("api/login", json={"password": "nope"}, headers={"X-CSRF-Token": csrf}).status_code == 403
        assert client.post("api/login", json={"password": PASSWORD}, headers={"X-CSRF-Token": csrf}).status_code == 200
        no_token = client.post("api/threshold", json=change)
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["reason"]
        wrong_token = client.post("api/threshold", json=change, headers={"X-CSRF-Token": csrf[::-1]})
        assert wrong_token.status_code == 403 and "CSRF" in wrong_token.json()["reason"]
        foreign = client.post("api/threshold", json=change, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.test"})
        assert foreign.status_code == 403 and "origin" in foreign.json()["reason"]
        cross_site = client.post("api/threshold", json=change, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})
        assert cross_site.status_code == 403
        rebound = client.get("api/session", headers={"Host": f"evil.test:{url.rsplit(':', 1)[1]}"})
        assert rebound.status_code == 421  # a DNS-rebinding name for the loopback page
        assert running_threshold_with(client) != 30.0
        applied = client.post("api/threshold", json=change, headers={"X-CSRF-Token": csrf, "Origin": url.rstrip("/")})
        assert applied.status_code == 200 and applied.json()["ok"] is True
        assert running_threshold_with(client) == 30.0
        pages = "".join(client.get(path).text for path in ("", "static/app.js", "api/session", "api/state"))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert PASSWORD not in pages and PASSWORD not in browser.page_source and PASSWORD not in daemon.log()
    assert "wrong page password" in daemon.log()


def running_threshold_with(client) -> float:
    return client.get("api/state").json()["threshold"]


def test_a_page_off_loopback_without_a_password_does_not_start(tmp_path):
    config, _ = page_config(tmp_path, None, mqtt={"enabled": False}, web={"host": "0.0.0.0"})
    daemon = DaemonProcess(config, {"LINEGUARD_WEB_PASSWORD": ""})
    assert daemon.wait(60) == 78
    errors = [line for line in daemon.log().splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "web.host is 0.0.0.0" in errors[0] and "password" in errors[0], daemon.log()[-2000:]
    check = run_cli("check-config", config, env={"LINEGUARD_WEB_PASSWORD": ""})
    assert check.returncode == 78 and "web.host is 0.0.0.0" in check.stderr, check.stderr
    assert run_cli("check-config", config, env={"LINEGUARD_WEB_PASSWORD": PASSWORD}).returncode == 0


def test_the_page_states_the_trainers_verdict_or_that_none_was_measured():
    from types import SimpleNamespace

    from edge.web.station import NOT_MEASURED, fitness_of

    summary = {"verdict": "not fit", "text": "not fit: catches 50% (1/2) at 0.0% false rejects", "threshold": 3.0,
               "caught": {"rate": 0.5}, "false_rejects": {"rate": 0.0}, "operating_points": []}
    assert fitness_of(SimpleNamespace(metrics={"fitness": summary}))["text"] == summary["text"]
    assert fitness_of(SimpleNamespace(metrics={}))["text"] == NOT_MEASURED
    assert fitness_of(SimpleNamespace(metrics={"fitness": "garbage"}))["verdict"] is None
