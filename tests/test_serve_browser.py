"""The live page in a real browser: headless Chromium whose microphone plays a test clip streams it to
``/stream`` and shows the clip's label and keyword events; its upload form shows a file's label.
Skips, saying why, without Chromium and chromium-driver (``tests/browser.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the server stack is the serve extra: pip install -e '.[dev]'")

from speechrnn.serving.app import create_app  # noqa: E402
from speechrnn.serving.model import ServedModel  # noqa: E402
from speechrnn.serving.server import BackgroundServer  # noqa: E402
from tests.browser import chromium  # noqa: E402, F401
from tests.test_serve import LIMITS, checkpoint, noise, tone  # noqa: E402, F401

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[BackgroundServer]:  # noqa: F811
    with BackgroundServer(create_app(ServedModel(checkpoint), LIMITS)) as running:
        yield running


def wait_for_text(browser, element_id: str, expected: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, TIMEOUT_S).until(lambda b: b.find_element(By.ID, element_id).text.strip() == expected)
    return browser.find_element(By.ID, element_id).text


def test_the_microphone_shows_the_clips_labels_and_events(server, chromium, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "tone-then-noise.wav"  # Chromium plays it in a loop: a tone event ends in each noise
    rng = np.random.default_rng(5)
    sf.write(clip, np.concatenate([tone(2.0, rng, 48000), noise(2.0, rng, 48000)]), 48000, subtype="PCM_16")
    browser = chromium(fake_audio=clip)
    browser.get(server.url + "/")
    WebDriverWait(browser, TIMEOUT_S).until(lambda b: "tone, noise" in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "start").click()
    assert wait_for_text(browser, "label", "tone") == "tone"
    WebDriverWait(browser, TIMEOUT_S).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#events li.event[data-label='tone']")
    )
    assert "listening" in browser.find_element(By.ID, "status").text
    assert float(browser.find_element(By.ID, "status").get_attribute("data-seconds")) > 1.0
    browser.find_element(By.ID, "stop").click()


def test_the_upload_form_shows_a_files_label(server, chromium, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    clip = tmp_path / "noise.wav"
    sf.write(clip, noise(1.0, np.random.default_rng(6), 22050), 22050)
    browser = chromium()
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(clip))
    browser.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
    assert wait_for_text(browser, "upload-label", "noise") == "noise"
    assert "noise: 1.000" in browser.find_element(By.ID, "upload-result").text
