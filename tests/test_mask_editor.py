"""The mask editor on the Review viewer, as a person uses it: headless Chromium against a real daemon looping one
frame with a known defect, a real Mosquitto broker, the bundled model. Drawn in frame pixels, previewed on the
held frames, applied to the next frames, kept over a restart, removed again."""
from __future__ import annotations

import json
import signal
import urllib.request

import cv2
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from tests.support.broker import free_port
from tests.support.browser import screenshot
from tests.support.daemon_harness import BASE, results, write_config
from tests.test_station_page import WAIT_S, browser, open_tab, poll, start_daemon  # noqa: F401 (fixture)
from tests.test_station_page import _no_daemon_outlives_its_test  # noqa: F401 (fixture)
from tests.test_station_review import BLOBS, FRAME_H, FRAME_W, ROI, frame_with

BLOB = BLOBS["blob-a"]
AROUND = 24  # frame pixels each side of the spot's centre (its radius is 12)


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def open_viewer(browser, url: str, shown: str = "fail") -> int:
    browser.get(url)
    open_tab(browser, "review")
    browser.find_element(By.CSS_SELECTOR, f"#review-filter option[value='{shown}']").click()
    seq = poll(lambda: click_first_picture(browser))  # the list is drawn again after the filter changes: retried
    image = browser.find_element(By.ID, "viewer-image")
    assert poll(lambda: image.is_displayed() and image.get_property("naturalWidth") == FRAME_W)
    return seq


def click_first_picture(browser) -> int | None:
    """Click the first card's picture; its seq, or None while the list is empty (a card replaced under the click
    raises a stale-element error, which poll retries)."""
    pictures = browser.find_elements(By.CSS_SELECTOR, "#review-list .item[data-seq] img")
    if not pictures:
        return None
    seq = int(pictures[0].find_element(By.XPATH, "./ancestor::*[@data-seq][1]").get_attribute("data-seq"))
    pictures[0].click()
    return seq


def click_frame_point(browser, x: float, y: float) -> None:
    """Click where frame pixel (x, y) is drawn on the screen (Selenium offsets are from the element's centre)."""
    image = browser.find_element(By.ID, "viewer-image")
    rect = image.rect
    ActionChains(browser).move_to_element_with_offset(
        image, (x + 0.5) / FRAME_W * rect["width"] - rect["width"] / 2,
        (y + 0.5) / FRAME_H * rect["height"] - rect["height"] / 2).click().perform()


def verdicts_after(collector, count: int) -> list[dict]:
    return results(collector)[count:]


def settled_on(verdicts: list[dict], verdict: str, frames: int = 3) -> bool:
    """The change took hold: at least ``frames`` verdicts of ``verdict`` and none other after the first of them
    (frames inspected before the change may still be arriving ahead of them)."""
    names = [v["verdict"] for v in verdicts]
    if verdict not in names:
        return False
    after = names[names.index(verdict):]
    if any(name != verdict for name in after):
        raise AssertionError(f"{verdict} then something else: {names}")
    return len(after) >= frames


def test_a_mask_drawn_on_the_viewer_is_previewed_applied_kept_over_a_restart_and_removed(
        tmp_path, broker, make_collector, browser):  # noqa: F811
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "000-blob.png"), frame_with(BLOB))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    config = write_config(tmp_path, broker.port, folder, web={"enabled": True, "port": port},
                          inference={"roi": list(ROI)}, source={"loop": True, "fps": 4})
    collector = make_collector(broker, [f"{BASE}/result"])
    daemon = start_daemon(config, url)
    assert poll(lambda: len(results(collector)) >= 2)
    assert all(v["verdict"] == "fail" for v in results(collector))

    chosen = open_viewer(browser, url)
    browser.find_element(By.ID, "mask-draw").click()
    bx, by = BLOB
    corners = [(bx - AROUND, by - AROUND), (bx + AROUND, by - AROUND), (bx + AROUND, by + AROUND),
               (bx - AROUND, by + AROUND)]
    click_frame_point(browser, 5, 5)
    browser.find_element(By.ID, "mask-undo").click()  # a stray point, taken back
    for x, y in corners:
        click_frame_point(browser, x, y)
    assert poll(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#viewer-mask circle")) == 4)
    browser.find_element(By.ID, "mask-close-polygon").click()
    assert poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#viewer-mask polygon"))

    # Preview: the chosen frame's score, as recorded and with the mask; the mask takes its defect away.
    browser.find_element(By.ID, "mask-preview").click()
    rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#mask-preview-table tbody tr")
    assert poll(rows), browser.find_element(By.ID, "mask-message").text
    top = rows()[0]
    threshold = fetch_json(url + "api/state")["threshold"]
    assert int(top.get_attribute("data-seq")) == chosen
    assert top.get_attribute("data-verdict") == "pass" and float(top.get_attribute("data-score")) < threshold
    assert "FAIL" in top.text and "PASS" in top.text
    screenshot(browser, tmp_path, "station-mask-editor.png")

    # Apply: stored in frame pixels, bound to the model; the next frames pass.
    browser.find_element(By.ID, "mask-apply").click()
    assert poll(lambda: "applied" in browser.find_element(By.ID, "mask-message").text), \
        browser.find_element(By.ID, "mask-message").text
    applied_at = len(results(collector))
    stored = json.loads((tmp_path / "state" / "mask.json").read_text())
    assert stored["model"]["sha256"] == fetch_json(url + "api/state")["model"]["sha256"]
    [polygon] = stored["polygons"]
    for (x, y), (cx, cy) in zip(polygon, corners):
        assert abs(x - cx) <= 1.5 and abs(y - cy) <= 1.5, (polygon, corners)
    assert poll(lambda: settled_on(verdicts_after(collector, applied_at), "pass")), \
        verdicts_after(collector, applied_at)
    audit = fetch_json(url + "api/threshold/audit")["changes"]
    assert audit[0]["action"] == "mask set" and audit[0]["who"].startswith("page 127.0.0.1") and audit[0]["to"] == 1

    # A restart keeps it.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(WAIT_S) == 0
    restarted_at = len(results(collector))
    daemon = start_daemon(config, url)
    assert poll(lambda: len(verdicts_after(collector, restarted_at)) >= 2)
    assert all(v["verdict"] == "pass" for v in verdicts_after(collector, restarted_at))
    assert fetch_json(url + "api/state")["mask_in_force"] == [polygon]

    # Removed on the page: the frame fails again.
    open_viewer(browser, url, "all")
    browser.find_element(By.ID, "mask-remove").click()
    assert poll(lambda: "removed" in browser.find_element(By.ID, "mask-message").text)
    removed_at = len(results(collector))
    assert not (tmp_path / "state" / "mask.json").exists()
    assert poll(lambda: settled_on(verdicts_after(collector, removed_at), "fail")), \
        verdicts_after(collector, removed_at)
    assert fetch_json(url + "api/threshold/audit")["changes"][0]["action"] == "mask reset"
