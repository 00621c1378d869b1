"""A real browser for the tests: headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
driven by Selenium. Tests that need it skip with the reason when either cannot be had.

    from tests.browser import chromium

    def test_page(chromium):
        browser = chromium()                      # a fresh headless browser, closed after the test
        browser.get("file:///.../report.html")

``chromium(fake_audio=Path("clip.wav"))`` gives a browser whose microphone is that wav file
(Chromium's fake capture device; the page is granted the microphone without asking).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")


def browser_binaries() -> tuple[str, str] | str:
    """``(browser, driver)`` paths of a Chromium and its WebDriver, or the reason there are none."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = next((path for name in DRIVERS if (path := shutil.which(name))), None)
    if browser is None or driver is None:
        return "no Chromium and chromium-driver on PATH (apt-get install chromium chromium-driver)"
    return browser, driver


def start_chromium(browser: str, driver: str, fake_audio: Path | None = None) -> Any:
    """A headless Chromium under Selenium; with ``fake_audio`` its microphone plays that wav file."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio"):
        options.add_argument(flag)
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    if fake_audio is not None:
        options.add_argument("--use-fake-ui-for-media-stream")
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument(f"--use-file-for-fake-audio-capture={Path(fake_audio).resolve()}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    session.set_page_load_timeout(30)
    session.set_script_timeout(30)
    return session


@pytest.fixture
def chromium() -> Iterator[Callable[..., Any]]:
    """A factory of headless Chromium sessions (``chromium(fake_audio=None)``), all closed after the test."""
    found = browser_binaries()
    if isinstance(found, str):
        pytest.skip(found)
    sessions: list[Any] = []

    def start(fake_audio: Path | None = None) -> Any:
        sessions.append(start_chromium(*found, fake_audio=fake_audio))
        return sessions[-1]

    yield start
    for session in sessions:
        session.quit()
