"""``report.html``: the evaluation report on one page, its clips playable, checked as HTML and in a real browser."""

from __future__ import annotations

import base64
import csv
import json
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from speechrnn.report_page import write_report_page
from speechrnn.reports import compute_metrics, write_report
from tests.browser import chromium  # noqa: F401  (the fixture)
from tests.conftest import chirp

HOSTILE = "<script>window.pwned = 1</script>"


class Page(HTMLParser):
    """What a test reads off ``report.html``: each table's rows (the row's attributes, its cells'
    text, the ``src`` of the audio in it), every element's tag and attributes, select options."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.options: dict[str, list[str]] = {}
        self._table: str | None = None
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._select: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": attributes, "cells": [], "audio": None}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "audio" and self._row is not None:
            self._row["audio"] = attributes.get("src")
        elif tag == "select":
            self._select = attributes["id"]
            self.options[self._select] = []
        elif tag == "option" and self._select:
            self.options[self._select].append(attributes["value"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def body_rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of ``table`` below its header."""
        return self.tables[table][1:]


def read_page(folder: Path) -> Page:
    return Page((folder / "report.html").read_text())


def write_clips(folder: Path, names: list[str], seconds: float = 0.2) -> list[Path]:
    """Small 16 kHz wav files named ``names`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        sf.write(folder / name, chirp("up", seconds, 16000, rng), 16000)
        paths.append(folder / name)
    return paths


def confident(targets: list[int], predicted: list[int], classes: int) -> np.ndarray:
    """Probabilities whose argmax is ``predicted``, each row a little different (distinct confidences)."""
    rows = np.full((len(targets), classes), 0.1)
    for i, p in enumerate(predicted):
        rows[i, p] = 0.5 + 0.02 * i
    return rows / rows.sum(1, keepdims=True)


def misclassified(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["true_label"] != r["predicted_label"]]


def test_every_misclassified_clip_is_listed_with_its_labels_and_top_probabilities(tmp_path: Path) -> None:
    names = ["up", "down", "flat", "noise"]
    targets = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    predicted = [0, 2, 2, 0, 1, 1, 3, 3, 0, 0]
    paths = write_clips(tmp_path / "clips", [f"c{i}.wav" for i in range(10)])
    probabilities = confident(targets, predicted, 4)
    speakers = [f"spk{i % 3}" for i in range(10)]
    write_report(tmp_path / "report", np.array(targets), probabilities, names, [str(p) for p in paths], speakers)
    page = read_page(tmp_path / "report")
    rows = page.body_rows("clips")
    wrong = [i for i in range(10) if targets[i] != predicted[i]]
    assert len(rows) == len(wrong) == len(misclassified(tmp_path / "report")) == 5
    by_path = {row["cells"][7]: row for row in rows}
    assert set(by_path) == {str(paths[i]) for i in wrong}
    for i in wrong:
        row = by_path[str(paths[i])]
        _, true, guess, p_guess, p_true, top, speaker, _ = row["cells"]
        assert (true, guess, speaker) == (names[targets[i]], names[predicted[i]], speakers[i])
        assert float(p_guess) == pytest.approx(probabilities[i].max(), abs=1e-3)
        assert float(p_true) == pytest.approx(probabilities[i, targets[i]], abs=1e-3)
        ranked = np.argsort(-probabilities[i])[:3]
        assert top == " · ".join(f"{names[c]} {probabilities[i, c]:.3f}" for c in ranked)
        assert row["audio"].startswith("data:audio/wav;base64,")
    confidences = [float(row["cells"][3]) for row in rows]
    assert confidences == sorted(confidences, reverse=True)  # most confident mistakes first
    assert page.options["filter-true"] == ["", "down", "flat", "noise", "up"]
    assert page.options["filter-speaker"] == ["", "spk0", "spk1"]  # the speakers of the mistakes
    accuracy = json.loads((tmp_path / "report" / "report.json").read_text())["accuracy"]
    assert page.body_rows("metrics")[0]["cells"] == ["accuracy", f"{accuracy:.4f}"]


def test_no_string_from_the_data_becomes_markup(tmp_path: Path) -> None:
    names = [HOSTILE, 'a"b&c', "<img src=x onerror=alert(1)>"]
    paths = write_clips(tmp_path / "clips", ["<i>odd&amp name.wav", "b.wav", "c.wav"])
    speakers = ["<b>spk</b>", "x", "y"]
    write_report(tmp_path / "report", np.array([0, 1, 2]), confident([0, 1, 2], [1, 2, 0], 3), names,
                 [str(p) for p in paths], speakers)  # fmt: skip
    text = (tmp_path / "report" / "report.html").read_text()
    for raw in (*names[::2], "<b>spk</b>", "<i>odd&amp name"):
        assert raw not in text
    page = Page(text)
    assert [tag for tag, _ in page.elements].count("script") == 1
    assert all(attrs["src"].startswith("data:image/png;base64,") for tag, attrs in page.elements if tag == "img")
    assert not any(key.startswith("on") for _, attrs in page.elements for key in attrs)
    rows = page.body_rows("clips")
    assert {row["cells"][1] for row in rows} == set(names)  # shown as text
    assert {row["cells"][7] for row in rows} == {str(p) for p in paths}
    assert {row["attrs"]["data-true"] for row in rows} == set(names)
    assert page.options["filter-speaker"] == ["", "<b>spk</b>", "x", "y"]


def test_audio_sources_resolve_to_the_clip_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # predictions.csv paths relative to the working directory, as a run gives them
    small = write_clips(tmp_path / "data", ["with space #1.wav", "a.wav", "b.wav"], seconds=0.1)
    large = write_clips(tmp_path / "data", ["long.wav"], seconds=1.0)
    paths = [str(p.relative_to(tmp_path)) for p in (*small, *large)] + ["data/missing.wav"]
    targets = [0, 0, 0, 0, 0]
    report = tmp_path / "runs" / "report_test"
    write_report(report, np.array(targets), confident(targets, [1] * 5, 2), ["yes", "no"], paths)
    write_report_page(report, clip_bytes=small[0].stat().st_size, total_bytes=2 * small[0].stat().st_size)
    rows = {row["cells"][7]: row["audio"] for row in read_page(report).body_rows("clips")}
    assert len(rows) == 5 and rows["data/missing.wav"] is None
    embedded = [p for p in paths if rows[p] and rows[p].startswith("data:")]
    referenced = [p for p in paths if rows[p] and not rows[p].startswith("data:")]
    assert len(embedded) == 2 and "data/long.wav" in referenced and len(referenced) == 2
    for path in embedded:
        assert base64.b64decode(rows[path].split(",", 1)[1]) == (tmp_path / path).read_bytes()
    for path in referenced:
        assert not rows[path].startswith(("/", "file:"))
        assert (report / urllib.parse.unquote(rows[path])).resolve() == (tmp_path / path).resolve()
    assert rows["data/with space #1.wav"].endswith("with%20space%20%231.wav")  # the most confident come first


def test_silence_clips_count_as_one_speaker(tmp_path: Path) -> None:
    speakers = ["_silence_/test_00000", "_silence_/test_00001", "_silence_/test_00002", "spk1", "spk1", "spk2"]
    targets = np.array([0, 0, 0, 1, 1, 1])
    probabilities = confident(list(targets), [0, 1, 0, 1, 0, 1], 2)
    metrics = compute_metrics(targets, probabilities, ["_silence_", "yes"], speakers)
    assert metrics["per_speaker_accuracy"] == {"_silence_": pytest.approx(2 / 3), "spk1": 0.5, "spk2": 1.0}
    assert metrics["per_speaker_examples"] == {"_silence_": 3, "spk1": 2, "spk2": 1}
    paths = write_clips(tmp_path / "clips", [f"{i}.wav" for i in range(6)])
    write_report(tmp_path / "report", targets, probabilities, ["_silence_", "yes"], [str(p) for p in paths], speakers)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| _silence_ | 3 | 0.6667 |" in markdown and "test_0000" not in markdown
    page = read_page(tmp_path / "report")
    assert [row["cells"] for row in page.body_rows("per-speaker")] == [
        ["_silence_", "3", "0.6667"], ["spk1", "2", "0.5000"], ["spk2", "1", "1.0000"]
    ]  # fmt: skip
    assert page.options["filter-speaker"] == ["", "_silence_", "spk1"]
    assert {row["cells"][6] for row in page.body_rows("clips")} == {"_silence_", "spk1"}


def test_calibration_error_is_the_reliability_diagrams_and_agrees_with_torchmetrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 5, 400)
    probabilities = rng.dirichlet(np.ones(5) * 0.5, 400)
    metrics = write_report(tmp_path, targets, probabilities, list("abcde"))
    bins = metrics["reliability"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 400
    gap = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / 400
    reference = multiclass_calibration_error(
        torch.as_tensor(probabilities, dtype=torch.float32), torch.as_tensor(targets), 5, n_bins=15, norm="l1"
    )
    assert metrics["expected_calibration_error"] == pytest.approx(gap) == pytest.approx(float(reference), abs=1e-5)
    assert (tmp_path / "reliability_diagram.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "report.json").read_text())["reliability"] == bins
    page = read_page(tmp_path)
    assert any(attrs.get("alt") == "reliability diagram" for tag, attrs in page.elements if tag == "img")
    assert "clips" not in page.tables or not any(row["audio"] for row in page.body_rows("clips"))


def test_per_step_and_error_free_reports_have_no_clip_list(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(2), 12)
    write_report(tmp_path / "frames", rng.integers(0, 2, 12), probabilities, ["silence", "speech"],
                 ["a.wav", "b.wav"], ["s1", "s2"], frames=[5, 7])  # fmt: skip
    page = read_page(tmp_path / "frames")
    assert "clips" not in page.tables and "bits per step" in [r["cells"][0] for r in page.body_rows("metrics")]
    assert "12 frames of 2 sequences" in (tmp_path / "frames" / "report.html").read_text()
    write_report(tmp_path / "right", np.array([0, 1]), np.eye(2), ["no", "yes"], ["a.wav", "b.wav"])
    assert "None of the 2 clips is misclassified." in (tmp_path / "right" / "report.html").read_text()


def stream_result(keywords: list[str]) -> dict[str, Any]:
    """A stream evaluation's result as :func:`speechrnn.evaluate.evaluate_streams` gives it (small numbers)."""
    point = {"fa_per_hour": 0.5, "false_alarms": 1, "frr": 0.25, "frr_per_keyword": dict.fromkeys(keywords, 0.25)}
    own = {k: {"placed": 4, "0.5": 0.5, "1.0": 0.25, "2.0": 0.0} for k in keywords}
    settings = {"seed": 0, "snr_db": 10.0, "unknown_per_gap": 1}
    described = {"settings": settings, "keywords_placed": 8, "keyword_streams": 1, "keyword_stream_seconds": 60.0,
                 "negative_seconds": 36.0, "negative_streams": 1, "negative_unknown_words": 7,
                 "unique_keyword_clips": 8, "unique_unknown_clips": 1, "unique_background_seconds": 6.4}  # fmt: skip
    detection = {"smoothing_s": 0.3, "refractory_s": 1.0, "tolerance_s": 0.5, "hop_s": 0.2}
    return {
        "split": "test", "calibrated_checkpoint": None, "temperature": 1.5, "target_fa_per_hour": 0.5,
        "streams": described, "detection": detection, "track_window_s": 0.8, "hours": 0.03, "negative_hours": 0.01,
        "stored_thresholds": point, "negative_false_alarms": 0, "negative_fa_per_hour": 0.0,
        "false_alarm_sources": {"background": 1, "non_keyword_word": 0, "keyword": 0, "distinct_clips": 0, "most": []},
        "sweep": "shift", "at_fa_per_hour": {"0.5": point, "1.0": point, "2.0": None},
        "per_keyword_at_own_fa_per_hour": own, "mean_frr_at_own_fa_per_hour": {"0.5": 0.5, "1.0": 0.25, "2.0": 0.0},
    }  # fmt: skip


def test_the_stream_evaluation_and_its_det_curve_join_the_page(tmp_path: Path) -> None:
    from speechrnn.evaluate import _add_to_report
    from speechrnn.reports import plot_confusion_matrix

    write_report(tmp_path, np.array([0, 1]), np.eye(2)[[1, 1]], ["go", HOSTILE], ["a.wav", "b.wav"])
    assert 'id="streams"' not in (tmp_path / "report.html").read_text()
    (tmp_path / "det_curve.png").write_bytes(plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"]))
    _add_to_report(tmp_path, stream_result(["go", HOSTILE]))
    text = (tmp_path / "report.html").read_text()
    page = Page(text)
    streams = text[text.index('<section id="streams">') :]
    assert "Keyword spotting in streams" in streams and "25.0 %" in streams and "not reached" in streams
    assert any(a.get("alt", "").startswith("DET curve") for tag, a in page.elements if tag == "img")
    assert HOSTILE not in text and [tag for tag, _ in page.elements].count("script") == 1


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test report that ``fit`` writes for a tiny, briefly trained keyword model (with
    ``_unknown_`` and ``_silence_`` classes), its page rewritten to embed only the first clip."""
    from speechrnn.fit import main as fit
    from tests.test_streams import write_words

    tmp = tmp_path_factory.mktemp("tiny")
    manifest, _ = write_words(tmp / "corpus", speakers=6, per_class=3)
    fit([
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest), "--data.keywords", "[up, down]",
        "--data.cache_dir", str(tmp / "cache"), "--data.batch_size", "8", "--data.features.normalize", "utterance",
        "--model.hidden_size", "8", "--model.num_layers", "1", "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp / "runs"), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    report = next((tmp / "runs").rglob("report_test"))
    first = Path(misclassified(report)[0]["path"]).stat().st_size
    write_report_page(report, total_bytes=first)
    return report


def test_the_browser_shows_the_report_filters_sorts_and_plays_clips(tiny_report: Path, chromium) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = chromium()
    browser.get((tiny_report / "report.html").as_uri())
    report = json.loads((tiny_report / "report.json").read_text())
    wrong = misclassified(tiny_report)
    assert wrong, "the tiny model should get some test clips wrong"
    assert browser.find_element(By.CSS_SELECTOR, "#metric-accuracy td.num").text == f"{report['accuracy']:.4f}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#clips tbody tr")
    assert len(rows) == len(wrong)

    def visible() -> list[Any]:
        return [row for row in browser.find_elements(By.CSS_SELECTOR, "#clips tbody tr") if row.is_displayed()]

    label = sorted({r["true_label"] for r in wrong})[-1]
    Select(browser.find_element(By.ID, "filter-true")).select_by_value(label)
    shown = visible()
    assert len(shown) == sum(r["true_label"] == label for r in wrong) >= 1
    assert {row.get_attribute("data-true") for row in shown} == {label}
    assert browser.find_element(By.ID, "shown").text == str(len(shown))
    Select(browser.find_element(By.ID, "filter-true")).select_by_value("")
    assert len(visible()) == len(wrong)

    header = browser.find_elements(By.CSS_SELECTOR, "#clips thead th")[4]  # P(true)
    column = "return Array.from(document.querySelectorAll('#clips tbody tr td:nth-child(5)')).map(c => c.dataset.sort)"
    header.click()
    ascending = [float(v) for v in browser.execute_script(column)]
    assert ascending == sorted(ascending) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert [float(v) for v in browser.execute_script(column)] == sorted(ascending, reverse=True)

    sources = browser.execute_script("return Array.from(document.querySelectorAll('#clips audio')).map(a => a.src)")
    assert len(sources) == len(wrong) and any(s.startswith("data:") for s in sources)
    assert any(s.startswith("file:") for s in sources)  # referenced relative to the page
    browser.execute_script(
        "document.querySelectorAll('#clips audio').forEach(a => { a.preload = 'metadata'; a.load(); })"
    )
    loaded = "return Array.from(document.querySelectorAll('#clips audio')).every(a => a.readyState && a.duration > 0)"
    WebDriverWait(browser, 15).until(lambda b: b.execute_script(loaded))
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_the_browser_runs_no_script_from_the_data(tmp_path: Path, chromium) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    names = [HOSTILE, "<img src=x onerror=window.pwned=2>"]
    paths = write_clips(tmp_path / "clips", ["a.wav", "b.wav"])
    write_report(tmp_path / "report", np.array([0, 1]), np.eye(2)[[1, 0]], names, [str(p) for p in paths],
                 [HOSTILE, "s"])  # fmt: skip
    browser = chromium()
    browser.get((tmp_path / "report" / "report.html").as_uri())
    assert browser.execute_script("return window.pwned === undefined")
    cells = browser.find_elements(By.CSS_SELECTOR, "#clips tbody tr td:nth-child(2)")
    assert sorted(cell.text for cell in cells) == sorted(names)
