"""The Review tab's viewer and the Threshold tab's typed value and audit list, as a person uses them: headless
Chromium against a real daemon on a folder replay, a real Mosquitto broker, the bundled model."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.support.broker import free_port
from tests.support.browser import screenshot
from tests.support.daemon_harness import BASE, results, unique_in_order, write_config
from tests.support.helpers import SAMPLES, wait_until
from tests.test_station_page import WAIT_S, browser, history_holds, open_tab, poll, start_daemon  # noqa: F401
from tests.test_station_page import _no_daemon_outlives_its_test  # noqa: F401 (fixture)

# A good digit enlarged 5x into a bigger frame; inference.roi is where it lies, so the model sees only that part,
# squeezed to its 28x28 input. A bright spot is pasted at a known place inside it (a defect), another outside it.
FRAME_W, FRAME_H = 200, 160
ROI = (40, 10, 140, 140)
OUTSIDE_SPOT = (12, 140)
BLOBS = {"blob-a": (152, 38), "blob-b": (66, 122)}
BLOB_RADIUS = 12
MODEL_PIXEL = ROI[2] // 28  # frame pixels per model pixel: the finest the heatmap can place anything
HOT_BAND = 60  # the hottest colours: red minus blue within this much of the image's most (JPEG blurs the peak)


def frame_with(blob: tuple[int, int] | None) -> np.ndarray:
    good = cv2.imread(str(sorted(SAMPLES.glob("*digit1.png"))[0]), cv2.IMREAD_GRAYSCALE)
    canvas = np.zeros((FRAME_H, FRAME_W), np.uint8)
    x, y, w, h = ROI
    canvas[y:y + h, x:x + w] = cv2.resize(good, (w, h), interpolation=cv2.INTER_NEAREST)
    cv2.circle(canvas, OUTSIDE_SPOT, 10, 255, -1)  # not seen by the model: never hot
    if blob is not None:
        cv2.circle(canvas, blob, BLOB_RADIUS, 255, -1)
    return canvas


def review_frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "000-good.png"), frame_with(None))
    for number, (name, blob) in enumerate(BLOBS.items(), 1):
        cv2.imwrite(str(folder / f"{number:03d}-{name}.png"), frame_with(blob))
    return folder


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def hottest_point(jpeg: bytes) -> tuple[float, float, np.ndarray]:
    """The centre of the hottest colours of an overlay (JET: red is hot, blue is cold), in its own pixels."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.int32)
    hot = image[:, :, 2] - image[:, :, 0]
    ys, xs = np.nonzero(hot >= hot.max() - HOT_BAND)
    return float(xs.mean()), float(ys.mean()), hot


def test_review_viewer_lays_the_heatmap_on_the_frame_and_steps_with_the_keys(tmp_path, broker, make_collector,
                                                                            browser):  # noqa: F811
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    config = write_config(tmp_path, broker.port, review_frames(tmp_path), web={"enabled": True, "port": port},
                          inference={"roi": list(ROI)})
    collector = make_collector(broker, [f"{BASE}/result"])
    daemon = start_daemon(config, url, "--keep-serving")
    assert daemon.wait_for_log("the station page stays up", WAIT_S), daemon.log()[-3000:]
    # The broker acknowledged every result; the subscriber may still be receiving them.
    assert collector.wait_for(lambda _: len(unique_in_order(results(collector))) >= 1 + len(BLOBS), WAIT_S)
    received = {v["image"]: v for v in unique_in_order(results(collector))}
    # The history and the evidence files are written on their own threads: a moment after the broker has them.
    fails = {v["seq"] for v in received.values() if v["verdict"] == "fail"}
    assert wait_until(lambda: history_holds(url, {v["seq"] for v in received.values()}, fails), WAIT_S)
    assert received["000-good.png"]["verdict"] == "pass"
    blob_seqs = {}
    for number, (name, (bx, by)) in enumerate(BLOBS.items(), 1):
        verdict = received[f"{number:03d}-{name}.png"]
        assert verdict["verdict"] == "fail", verdict
        seq = blob_seqs[name] = verdict["seq"]
        # The served heatmap has the frame's geometry, and its hottest point lies on the pasted spot.
        frame = cv2.imdecode(np.frombuffer(fetch(f"{url}api/evidence/{seq}/frame"), np.uint8), cv2.IMREAD_COLOR)
        hx, hy, hot = hottest_point(fetch(f"{url}api/evidence/{seq}/heat"))
        assert hot.shape == frame.shape[:2] == (FRAME_H, FRAME_W)
        assert abs(hx - bx) <= MODEL_PIXEL and abs(hy - by) <= MODEL_PIXEL, (name, (hx, hy), (bx, by))
        assert hot[OUTSIDE_SPOT[1], OUTSIDE_SPOT[0]] < hot.max() - 100  # outside the ROI: dimmed, not hot
        # The region boxes are in frame pixels too: the spot is inside one.
        assert any(r["x"] <= bx <= r["x"] + r["w"] and r["y"] <= by <= r["y"] + r["h"] for r in verdict["regions"])

    received = {v["image"]: v for v in unique_in_order(results(collector))}
    # The history and the evidence files are written on their own threads: a moment after the broker has them.
    fails = {v["seq"] for v in received.values() if v["verdict"] == "fail"}
    assert wait_until(lambda: history_holds(url, {v["seq"] for v in received.values()}, fails), WAIT_S)
    browser.get(url)
    open_tab(browser, "review")
    browser.find_element(By.CSS_SELECTOR, "#review-filter option[value='all']").click()
    cards = lambda: browser.find_elements(By.CSS_SELECTOR, "#review-list .item")
    assert poll(lambda: len(cards()) == len(received))
    order = poll(lambda: [int(card.get_attribute("data-seq")) for card in cards()])  # newest first
    first = blob_seqs["blob-a"]
    # The list is drawn again when the filter changes: a card replaced under the click is retried by poll.
    assert poll(lambda: browser.find_element(By.CSS_SELECTOR, f"#review-list .item[data-seq='{first}'] img").click()
                or True)
    viewer, image = browser.find_element(By.ID, "review-viewer"), browser.find_element(By.ID, "viewer-image")
    shown = lambda: (int(image.get_attribute("data-seq")), image.get_attribute("data-kind"),
                     image.get_property("naturalWidth"))
    assert poll(lambda: viewer.is_displayed() and shown() == (first, "heat", FRAME_W))
    # The heatmap is drawn over the whole frame at one scale, and the region box sits on the spot on screen.
    assert poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#viewer-boxes rect"))
    box = browser.find_element(By.CSS_SELECTOR, "#viewer-boxes rect").rect
    picture = image.rect
    zoom = picture["width"] / FRAME_W
    assert abs(picture["height"] / FRAME_H - zoom) < 0.02
    bx, by = BLOBS["blob-a"]
    assert box["x"] <= picture["x"] + bx * zoom <= box["x"] + box["width"]
    assert box["y"] <= picture["y"] + by * zoom <= box["y"] + box["height"]
    screenshot(browser, tmp_path, "station-review-viewer.png")
    # On the screen, too: the hottest point of what the browser drew lies on the spot.
    png = cv2.imdecode(np.frombuffer(image.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR).astype(np.int32)
    hot = png[:, :, 2] - png[:, :, 0]
    ys, xs = np.nonzero(hot >= hot.max() - HOT_BAND)
    scale = png.shape[1] / FRAME_W
    assert abs(xs.mean() / scale - bx) <= MODEL_PIXEL and abs(ys.mean() / scale - by) <= MODEL_PIXEL

    # Toggles: the raw frame, then back to the heatmap; regions off leaves no boxes.
    browser.find_element(By.ID, "viewer-raw").click()
    assert poll(lambda: shown()[1] == "frame" and not browser.find_elements(By.CSS_SELECTOR, "#viewer-boxes rect"))
    browser.find_element(By.ID, "viewer-raw").click()
    browser.find_element(By.ID, "viewer-regions").click()
    assert poll(lambda: shown()[1] == "heat" and not browser.find_elements(By.CSS_SELECTOR, "#viewer-boxes rect"))
    browser.find_element(By.ID, "viewer-overlay").click()
    assert poll(lambda: shown()[1] == "frame")
    browser.find_element(By.ID, "viewer-overlay").click()

    # Keys: right is the next card, left the previous one, Escape closes.
    at = order.index(first)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert poll(lambda: shown()[0] == order[at + 1])
    body.send_keys(Keys.ARROW_LEFT)
    assert poll(lambda: shown()[0] == first)
    body.send_keys(Keys.ARROW_LEFT)
    assert poll(lambda: shown()[0] == order[at - 1])
    body.send_keys(Keys.ESCAPE)
    assert poll(lambda: not viewer.is_displayed())

    # Filters: fail shows the two spotted frames; "with regions only" keeps them too.
    browser.find_element(By.CSS_SELECTOR, "#review-filter option[value='fail']").click()
    assert poll(lambda: {int(c.get_attribute("data-seq")) for c in cards()} == set(blob_seqs.values()))
    browser.find_element(By.CSS_SELECTOR, "#review-filter option[value='pass']").click()
    assert poll(lambda: [int(c.get_attribute("data-seq")) for c in cards()] == [received["000-good.png"]["seq"]])
    browser.find_element(By.ID, "review-with-regions").click()
    assert poll(lambda: not cards())
    assert json.loads(fetch(url + "api/state"))["inspecting"]


def audit_rows(browser) -> list[dict]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#threshold-audit tbody tr")
    return [dict(zip(("ts", "who", "action", "from", "to", "why"), [td.text for td in row.find_elements(By.TAG_NAME, "td")]),
                 to_value=row.get_attribute("data-to")) for row in rows]


def test_a_typed_threshold_is_applied_and_every_change_is_in_the_audit_list(tmp_path, broker, make_collector,
                                                                           browser):  # noqa: F811
    from tests.support.daemon_harness import sample_folder

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    config = write_config(tmp_path, broker.port, sample_folder(tmp_path), web={"enabled": True, "port": port})
    collector = make_collector(broker, [f"{BASE}/reply"])
    daemon = start_daemon(config, url, "--keep-serving")
    assert daemon.wait_for_log("the station page stays up", WAIT_S), daemon.log()[-3000:]
    browser.get(url)
    open_tab(browser, "threshold")
    assert poll(lambda: browser.find_element(By.ID, "threshold-current").text != "-")
    assert poll(lambda: "no change" in browser.find_element(By.ID, "threshold-audit-message").text)
    state = json.loads(fetch(url + "api/state"))
    low, high = state["threshold_range"]
    typed = round(state["threshold"] * 1.1, 3)
    assert low < typed < high

    # Typed, with a reason, and applied: the same command path as the slider's Apply.
    field = browser.find_element(By.ID, "threshold-input")
    field.clear()
    field.send_keys(str(typed))
    assert poll(lambda: float(browser.find_element(By.ID, "threshold-value").get_attribute("data-threshold")) == typed)
    browser.find_element(By.ID, "threshold-why").send_keys("fewer false rejects on batch 7")
    browser.find_element(By.ID, "threshold-apply").click()
    assert poll(lambda: "->" in browser.find_element(By.ID, "threshold-message").text)
    assert json.loads(fetch(url + "api/state"))["threshold"] == typed
    assert poll(lambda: audit_rows(browser) and float(audit_rows(browser)[0]["to_value"]) == typed)
    [row] = audit_rows(browser)
    assert row["who"].startswith("page 127.0.0.1") and row["action"] == "set" and row["why"] == \
        "fewer false rejects on batch 7"
    assert float(row["from"]) == state["threshold"] or abs(float(row["from"]) / state["threshold"] - 1) < 1e-5
    screenshot(browser, tmp_path, "station-threshold-audit.png")

    # A change over MQTT and a reset on the page are logged too, newest first, with their origin.
    collector.publish(f"{BASE}/cmd/threshold", json.dumps({"threshold": typed * 1.05, "why": "line 2 trial"}))
    assert poll(lambda: json.loads(fetch(url + "api/state"))["threshold"] == typed * 1.05)
    browser.find_element(By.ID, "threshold-reset").click()
    assert poll(lambda: len(audit_rows(browser)) == 3)
    rows = audit_rows(browser)
    assert [(r["who"], r["action"]) for r in rows[:2]] == [(rows[0]["who"], "reset"), ("mqtt", "set")]
    assert rows[0]["who"].startswith("page ") and rows[1]["why"] == "line 2 trial"
    assert float(rows[0]["to_value"]) == json.loads(fetch(url + "api/state"))["bundle_threshold"]

    # The log scale is an option: the running threshold keeps its value, the slider moves under it.
    before = browser.find_element(By.ID, "threshold-slider").get_attribute("value")
    browser.find_element(By.ID, "threshold-log").click()
    assert poll(lambda: browser.find_element(By.ID, "threshold-slider").get_attribute("value") != before)
