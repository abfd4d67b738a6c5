"""Debian's headless Chromium through Selenium, for the station page tests. Nothing is downloaded: the browser
and driver are /usr/bin/chromium and /usr/bin/chromedriver (CI installs chromium and chromium-driver)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
WINDOW = "1280,1000"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-extensions", f"--window-size={WINDOW}")
# Screenshots for the README: set to a folder (docs/) to keep them; otherwise they go to the test's tmp_path.
SCREENSHOT_DIR_ENV = "LINEGUARD_SCREENSHOT_DIR"


def start_chromium(profile: Path) -> webdriver.Chrome:
    """A fresh headless Chromium with its own profile folder; fails (never skips) when it is not installed."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} not found: install Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    """Save a screenshot into tmp_path, and into $LINEGUARD_SCREENSHOT_DIR when that is set."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    keep = os.environ.get(SCREENSHOT_DIR_ENV)
    if keep:
        shutil.copy(path, Path(keep) / name)
    return path
