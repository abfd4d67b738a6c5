"""The station page on a 400 px wide screen (a phone, a small panel PC): every tab fits, with no horizontal scroll.
Headless Chromium against a real daemon on a folder replay that keeps serving."""
from __future__ import annotations

from selenium.webdriver.common.by import By

from tests.support.browser import screenshot
from tests.test_station_page import STARTED, browser, open_tab, page_config, poll, start_daemon  # noqa: F401

WIDTH_PX = 400
OVERFLOW_JS = """
const root = document.documentElement;
const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > root.clientWidth + 1
  && e.offsetParent !== null).map((e) => e.id || e.className || e.tagName);
return {scroll: root.scrollWidth, client: root.clientWidth, wide: wide.slice(0, 8)};
"""


def test_every_tab_fits_a_400_px_wide_window_without_horizontal_scroll(tmp_path, browser):  # noqa: F811
    config, url = page_config(tmp_path, None, web={"keep_serving_after_replay": True}, mqtt={"enabled": False})
    start_daemon(config, url)
    browser.set_window_size(WIDTH_PX, 800)
    assert browser.execute_script("return window.innerWidth") <= WIDTH_PX
    browser.get(url)
    assert poll(lambda: browser.find_element(By.ID, "device").text), "the page did not load its state"
    for tab in ("live", "review", "threshold", "stats"):
        open_tab(browser, tab)
        poll(lambda: browser.find_element(By.ID, f"tab-{tab}").is_displayed())
        if tab == "review":
            poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#review-list .item"), 10)
        if tab == "stats":
            poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#stats-cards .card"), 10)
        measured = browser.execute_script(OVERFLOW_JS)
        screenshot(browser, tmp_path, f"narrow-{tab}.png")
        assert measured["scroll"] <= measured["client"], (tab, measured)
