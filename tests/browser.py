"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the console.

The gateway under test runs on the test's event loop, so browser steps (blocking WebDriver
calls) run in a worker thread: `await asyncio.to_thread(step, browser)`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["SCREENSHOTS", "Browser", "chromium"]

# Every run saves its screenshots; into the README's docs/console/ only when asked
# (`AIGW_SCREENSHOTS=docs/console make test ARGS=tests/test_console.py`), so an ordinary run
# leaves the tracked pictures alone.
SCREENSHOTS = Path(
    os.environ.get("AIGW_SCREENSHOTS") or Path(tempfile.gettempdir()) / "aigw-console-screenshots"
).resolve()
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


class Browser:
    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.base = ""

    def get(self, path: str) -> None:
        self.driver.get(self.base + path)

    @property
    def path(self) -> str:
        url = self.driver.current_url
        return url[len(self.base) :] if url.startswith(self.base) else url

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def fill(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def wait(self, predicate: Callable[[webdriver.Chrome], Any], timeout: float = 15) -> Any:
        return WebDriverWait(self.driver, timeout).until(predicate)

    def wait_for(self, css: str, timeout: float = 15) -> WebElement:
        return self.wait(lambda d: d.find_element(By.CSS_SELECTOR, css), timeout)

    def screenshot(self, name: str, width: int = 1280) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, min(max(int(height) + 40, 600), 2400))
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        self.driver.set_window_size(1280, 900)


@contextmanager
def chromium() -> Iterator[Browser]:
    profile = tempfile.mkdtemp(prefix="aigw-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
