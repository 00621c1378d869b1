"""Keyword spotting on streams: test streams, matching events to truth, false rejections at
false-alarm rates, calibration (temperature, thresholds) and ``evaluate --streams`` end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.errors import ConfigError
from speechrnn.spotting.calibration import (
    Detector,
    SpottingSettings,
    choose_smoothing,
    choose_thresholds,
    fit_temperature,
    negative_log_likelihood,
    write_calibrated,
)
from speechrnn.spotting.events import Event
from speechrnn.spotting.metrics import det_curve_png, global_thresholds, match_events, operating_point, sweep
from speechrnn.spotting.scoring import PosteriorTrack
from speechrnn.spotting.streams import StreamSet, StreamSettings, Truth, active_span
from tests.conftest import chirp

RATE = 16000


def write_words(root: Path, speakers: int = 6, per_class: int = 3) -> tuple[Path, list[tuple[str, str, str]]]:
    """``root/<label>/spk<s>_<n>.wav``: rising (up) and falling (down) chirps, the keywords, and flat
    ones, the non-keyword words, each with silence around it; and a ``_background_noise_`` recording
    (30 s of quiet hum and noise). Returns the manifest and its rows (path, label, speaker)."""
    rng = np.random.default_rng(7)
    rows = []
    for label in ("up", "down", "flat"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for speaker in range(speakers):
            for n in range(per_class):
                word = chirp(label, rng.uniform(0.25, 0.4), RATE, rng)
                wave = np.concatenate([np.zeros(int(0.2 * RATE)), word, np.zeros(int(0.25 * RATE))]).astype(np.float32)
                path = root / label / f"spk{speaker}_{n}.wav"
                sf.write(path, wave, RATE)
                rows.append((str(path.relative_to(root)), label, f"spk{speaker}"))
    (root / "_background_noise_").mkdir(exist_ok=True)
    t = np.arange(30 * RATE) / RATE
    background = 0.01 * np.sin(2 * np.pi * 50 * t) + 0.01 * rng.standard_normal(len(t))
    sf.write(root / "_background_noise_" / "hum.wav", background.astype(np.float32), RATE)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker"])
        writer.writerows(rows)
    return manifest, rows


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str, str]]]:
    root = tmp_path_factory.mktemp("words")
    manifest, rows = write_words(root)
    return root, rows


def stream_set(words, seed: int = 0, **settings) -> StreamSet:
    root, rows = words
    keywords = [(str(root / path), label) for path, label, _ in rows if label != "flat"][:8]
    unknown = [str(root / path) for path, label, _ in rows if label == "flat"][:4]
    background = [(str(root / "_background_noise_" / "hum.wav"), 0, 5 * RATE)]
    options = {"keywords_per_stream": 4, "negative_hours": 0.02, "negative_stream_minutes": 0.5, "seed": seed}
    return StreamSet(keywords, unknown, background, RATE, StreamSettings(**{**options, **settings}))


# --- streams ---------------------------------------------------------------------------------------
def test_streams_are_deterministic_and_their_blocks_make_the_whole(words) -> None:
    first, again, other = stream_set(words), stream_set(words), stream_set(words, seed=1)
    assert first.truth == again.truth and first.truth != other.truth
    assert len(first.truth) == 8 and {t.file for t in first.truth} == {"keywords-000", "keywords-001"}
    assert [s.name for s in first.negative_streams] == ["negative-000", "negative-001", "negative-002"]
    assert first.seconds("negative") == pytest.approx(0.02 * 3600)
    for stream in first.streams:
        whole = first.render(stream)
        assert len(whole) == stream.samples
        np.testing.assert_array_equal(whole, again.render(stream.name))
        blocks = list(first.blocks(stream, block_s=0.73))
        assert max(len(b) for b in blocks) == round(0.73 * RATE)
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert not np.array_equal(first.render("negative-000"), other.render("negative-000"))
    described = first.describe()
    assert described["unique_background_seconds"] == pytest.approx(5.0)  # loops: 72 s of negatives on 5 s
    assert described["keywords_placed"] == 8 and described["negative_unknown_words"] > 0


def test_keywords_sit_where_the_truth_says_at_the_asked_snr(words) -> None:
    streams = stream_set(words, unknown_per_gap=0, snr_db=7.5, negative_hours=0)
    for stream in streams.keyword_streams:
        speech = streams.render(stream, background=False)
        noise = streams.render(stream, words=False)
        inside = np.zeros(stream.samples, bool)
        for truth in (t for t in streams.truth if t.file == stream.name):
            start, end = round(truth.start * RATE), round(truth.end * RATE)
            inside[start:end] = True
            snr = 10 * np.log10(np.mean(speech[start:end] ** 2) / np.mean(noise[start:end] ** 2))
            assert snr == pytest.approx(7.5, abs=1e-3)
            whole = streams.render(stream)  # the word is far louder than the background before it
            assert np.mean(whole[start:end] ** 2) > 4 * np.mean(whole[start - int(0.3 * RATE) : start] ** 2)
        assert not speech[~inside].any() and (np.abs(speech[inside]) > 0).mean() > 0.6
        np.testing.assert_allclose(speech + noise, streams.render(stream), atol=1e-6)


def test_truth_spans_are_the_words_without_their_silence(words) -> None:
    root, rows = words
    wave, _ = sf.read(root / rows[0][0], dtype="float32")
    start, stop = active_span(wave, RATE)
    end = len(wave) / RATE - 0.25  # the word is [0.2 s, end), with 0.2 s and 0.25 s of silence around it
    assert 0.12 * RATE < start < 0.22 * RATE and (end - 0.02) * RATE < stop < (end + 0.08) * RATE
    streams = stream_set(words)
    assert all(0.3 < t.end - t.start < 0.6 for t in streams.truth)
    # where the corpus says the speech is, that is the word (with 50 ms either side)
    background = [(str(root / "_background_noise_" / "hum.wav"), 0, None)]
    told = StreamSet([(str(root / rows[0][0]), "up", ((0.25, 0.4),))], [], background, RATE, StreamSettings())
    assert told.keyword_clips[0].start == round(0.2 * RATE) and told.truth[0].end - told.truth[0].start == 0.25


def test_negative_streams_hold_no_keyword(words) -> None:
    streams = stream_set(words, unknown_per_minute=20)
    for stream in streams.negative_streams:
        assert all(streams.clips[i].label == "_unknown_" for i in stream.clips.tolist())
    words_placed = sum(s.words for s in streams.negative_streams)
    assert 0.5 * 20 * 72 / 60 < words_placed <= 1.5 * 20 * 72 / 60
    assert [t.file for t in streams.truth if t.file.startswith("negative")] == []


def test_bad_stream_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="keywords_per_stream"):
        StreamSettings(keywords_per_stream=0)
    with pytest.raises(ConfigError, match="negative_hours"):
        StreamSettings(negative_hours=-1)


# --- matching and operating points -----------------------------------------------------------------
def event(file: str, start: float, end: float, label: str, score: float = 0.9) -> Event:
    return Event(file, start, end, label, score)


def test_matching_counts_hits_misses_duplicates_and_tolerance() -> None:
    truth = [Truth("a", 1.0, 1.5, "up"), Truth("a", 5.0, 5.5, "down"), Truth("a", 10.0, 10.5, "up")]
    events = [
        event("a", 0.6, 1.2, "up"),  # hit
        event("a", 1.3, 2.0, "up"),  # a second event on the same keyword: false alarm
        event("a", 1.0, 1.5, "down"),  # wrong label: false alarm
        event("b", 5.0, 5.5, "down"),  # another file: false alarm (the down keyword is missed)
        event("a", 10.8, 11.5, "up"),  # 0.3 s after the keyword ends
    ]
    wide = match_events(events, truth, tolerance_s=0.5)
    assert [t.start for _, t in wide.hits] == [1.0, 10.0] and [t.label for t in wide.misses] == ["down"]
    assert len(wide.false_alarms) == 3 and wide.frr == pytest.approx(1 / 3)
    assert wide.frr_per_keyword() == {"down": 1.0, "up": 0.0}
    narrow = match_events(events, truth, tolerance_s=0.2)
    assert len(narrow.hits) == 1 and len(narrow.misses) == 2 and len(narrow.false_alarms) == 4
    # each truth once, each event once: two events on two close keywords both hit
    close = [Truth("a", 1.0, 1.4, "up"), Truth("a", 1.9, 2.3, "up")]
    both = match_events([event("a", 0.8, 2.0, "up"), event("a", 1.8, 2.5, "up")], close, 0.5)
    assert len(both.hits) == 2 and not both.false_alarms


def test_false_rejections_at_false_alarm_rates_on_hand_made_events() -> None:
    truth = [Truth("kw", 10.0 * i, 10.0 * i + 0.5, "up") for i in range(10)]
    hit_scores = [0.99, 0.97, 0.9, 0.88, 0.8, 0.7, 0.6, 0.55]  # keywords 8 and 9 are never found
    events = [event("kw", 10.0 * i, 10.0 * i + 0.6, "up", s) for i, s in enumerate(hit_scores)]
    events += [event("neg", 100.0 * i, 100.0 * i + 1, "up", s) for i, s in enumerate([0.95, 0.85, 0.75, 0.65])]
    points, best = sweep(lambda t: [e for e in events if e.score >= t], truth, 2.0, global_thresholds)
    assert best[0.5].frr == pytest.approx(0.6) and best[0.5].false_alarms == 1  # threshold above 0.85
    assert best[1.0].frr == pytest.approx(0.5) and best[1.0].false_alarms == 2
    assert best[2.0].frr == pytest.approx(0.2) and best[2.0].fa_per_hour == pytest.approx(2.0)
    assert all(a.parameter < b.parameter for a, b in zip(points, points[1:], strict=False))
    assert det_curve_png(points, marked=best[1.0]).startswith(b"\x89PNG")
    at = operating_point([e for e in events if e.score >= 0.7], truth, 2.0)
    assert (at.false_alarms, at.misses, at.fa_per_hour) == (3, 4, 1.5)


# --- calibration -----------------------------------------------------------------------------------
CLASSES = ["_silence_", "_unknown_", "down", "up"]


def track(bumps: dict[str, list[tuple[float, float]]], seconds: float = 600.0) -> PosteriorTrack:
    """Posteriors every 0.1 s: each class's bumps (peak, centre time) 0.5 s wide over _silence_."""
    times = np.arange(1, int(seconds * 10) + 1) / 10
    probabilities = np.zeros((len(times), len(CLASSES)), np.float32)
    for label, peaks in bumps.items():
        for peak, centre in peaks:
            probabilities[np.abs(times - centre) <= 0.25, CLASSES.index(label)] = peak
    probabilities[:, 0] = 1 - probabilities[:, 1:].sum(1)
    return PosteriorTrack(times, probabilities, CLASSES, window_s=0.5, hop_s=0.1, duration_s=seconds)


def test_thresholds_are_the_lowest_that_keep_each_keyword_in_its_share() -> None:
    tracks = {
        "kw": track({"up": [(0.85, 5.0)], "down": [(0.6, 20.0)]}, 30.0),
        "neg": track({"up": [(0.9, 50), (0.8, 150), (0.7, 250), (0.6, 350)], "down": [(0.95, 100), (0.55, 300)]}),
    }
    truth = [Truth("kw", 4.9, 5.1, "up"), Truth("kw", 19.9, 20.1, "down")]
    settings = SpottingSettings(target_fa_per_hour=0.5, smoothing_s=0.0, refractory_s=1.0, min_threshold=0.5)
    detect = Detector(tracks, settings)
    thresholds, details = choose_thresholds(detect, truth, 4.0, settings)  # 2 false alarms allowed, 1 each
    assert 0.8 < thresholds["up"] < 0.8 + 1e-4 and 0.55 < thresholds["down"] < 0.55 + 1e-4
    assert details["up"] == {"threshold": thresholds["up"], "allowed": 1, "false_alarms": 1, "met": True}
    point = operating_point(detect(thresholds), truth, 4.0, settings.tolerance_s)
    assert point.false_alarms == 2 and point.misses == 0  # the target met, both keywords found
    lower = {"up": 0.8, "down": thresholds["down"]}  # any lower and up has two false alarms
    assert operating_point(detect(lower), truth, 4.0).false_alarms == 3
    quiet = choose_thresholds(Detector({"kw": tracks["kw"]}, settings), truth, 4.0, settings)[0]
    assert quiet == {"down": 0.5, "up": 0.5}  # no false alarm anywhere: the lowest threshold allowed


def test_calibration_keeps_the_smoothing_whose_thresholds_miss_the_fewest_keywords() -> None:
    """A keyword held at 0.8 for 0.7 s, and in the negative audio a 0.3 s burst at 1.0 of the same
    keyword: smoothed over 0.1 or 0.3 s the burst outscores the keyword (no threshold keeps it and finds
    the keyword); over 0.5 s the burst falls to 0.6 and a threshold just above it finds the keyword."""
    times = np.arange(1, 601) / 10
    keyword, burst = np.zeros(600, np.float32), np.zeros(600, np.float32)
    keyword[197:204], burst[299:302] = 0.8, 1.0
    tracks = {
        name: PosteriorTrack(times, np.stack([1 - up, np.zeros_like(up), np.zeros_like(up), up], 1), CLASSES, 0.5, 0.1)
        for name, up in (("kw", keyword), ("neg", burst))
    }
    truth = [Truth("kw", 19.8, 20.4, "up")]
    settings = SpottingSettings(smoothing_s=0.3, refractory_s=1.0, min_threshold=0.5)
    chosen, detect, thresholds, _, tried = choose_smoothing(tracks, truth, 1.0, settings)
    assert chosen.smoothing_s == 0.5 and 0.6 < thresholds["up"] < 0.6 + 1e-4
    assert tried["0.3"]["frr"] == tried["0.1"]["frr"] == 1.0 and tried["0.5"] == {"frr": 0.0, "fa_per_hour": 0.0}
    assert operating_point(detect(thresholds), truth, 1.0).misses == 0
    kept = choose_smoothing(tracks, truth, 1.0, dataclasses.replace(settings, smoothing_choices=()))
    assert kept[0].smoothing_s == 0.3 and list(kept[4]) == ["0.3"]  # no choices: the length given
    with pytest.raises(ConfigError, match="smoothing_choices"):
        SpottingSettings(smoothing_choices=(0.3, -1.0))


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (20000, 5))
    targets = np.argmax(true_logits + rng.gumbel(size=true_logits.shape), axis=1)  # drawn from softmax
    overconfident = 3.0 * true_logits
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = negative_log_likelihood(overconfident, targets)
    assert negative_log_likelihood(overconfident, targets, temperature) < before
    shifted = overconfident - overconfident.max(1, keepdims=True)  # log-probabilities up to a constant
    assert fit_temperature(shifted, targets) == pytest.approx(temperature, rel=1e-3)
    separable = np.eye(5)[targets] * 4.0  # every clip right: sharper always fits better, down to the bound
    assert fit_temperature(separable, targets) == 1.0


def test_calibrated_checkpoint_is_a_new_file_and_the_original_is_untouched(tmp_path: Path) -> None:
    original = tmp_path / "checkpoints" / "last.ckpt"
    original.parent.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}, "data_config": {"class_names": CLASSES}}, original)
    before = original.read_bytes()
    spotting = {"temperature": np.float64(1.5), "thresholds": {"up": 0.9}, "target_fa_per_hour": 0.5}
    written = write_calibrated(original, spotting)
    assert written == original.with_name("calibrated.ckpt") and original.read_bytes() == before
    loaded = torch.load(written, weights_only=True)
    assert loaded["data_config"] == {"class_names": CLASSES, "spotting": {**spotting, "temperature": 1.5}}
    with pytest.raises(ConfigError, match="must not overwrite"):
        write_calibrated(original, spotting, original)


# --- evaluate --streams ----------------------------------------------------------------------------
def test_stream_analysis_finds_what_lies_under_each_false_alarm(words) -> None:
    from speechrnn.evaluate import analyse_streams, stream_markdown

    streams = stream_set(words, unknown_per_minute=20)
    tracks = {}
    for stream in streams.streams:
        times = np.arange(1, int(stream.samples / RATE / 0.1) + 1) * 0.1
        probabilities = np.zeros((len(times), len(CLASSES)), np.float32)
        for truth in (t for t in streams.truth if t.file == stream.name):  # every keyword found
            probabilities[(times >= truth.start) & (times <= truth.end + 0.3), CLASSES.index(truth.label)] = 0.9
        if stream.kind == "negative":  # the first non-keyword word of each negative stream taken for up
            first = stream.starts[0] / RATE
            probabilities[(times >= first) & (times <= first + 0.3), CLASSES.index("up")] = 0.8
        probabilities[:, 0] = 1 - probabilities.sum(1)
        tracks[stream.name] = PosteriorTrack(times, probabilities, CLASSES, 0.5, 0.1, stream.samples / RATE)
    settings = SpottingSettings(smoothing_s=0.0)
    result, analysis = analyse_streams(streams, tracks, {"down": 0.5, "up": 0.5}, settings)
    stored = result["stored_thresholds"]
    assert stored["misses"] == 0 and stored["false_alarms"] == result["negative_false_alarms"] == 3
    sources = result["false_alarm_sources"]
    assert (sources["background"], sources["non_keyword_word"], sources["keyword"]) == (0, 3, 0)
    assert sum(m["false_alarms"] for m in sources["most"]) == 3 and sources["most"][0]["detected_as"] == "up"
    assert result["per_keyword_at_own_fa_per_hour"]["up"]["0.5"] == 0.0  # above 0.8, every up is still found
    assert result["mean_frr_at_own_fa_per_hour"] == {"0.5": 0.0, "1.0": 0.0, "2.0": 0.0}
    assert result["at_fa_per_hour"]["0.5"]["frr"] == 0.0 and len(analysis["events"]) == 11
    section = stream_markdown({**result, "split": "test", "calibrated_checkpoint": None, "temperature": 1.0,
                               "target_fa_per_hour": 0.5}, 0.9)  # fmt: skip
    assert "a non-keyword word 3" in section and "| mean |  | 0.0 % | 0.0 % | 0.0 % |" in section


def test_streams_flag_alone_or_with_options() -> None:
    from speechrnn.evaluate import streams_flag

    assert streams_flag(["--streams", "--ckpt", "a"]) == ["--streams={}", "--ckpt", "a"]
    assert streams_flag(["--ckpt", "a", "--streams"]) == ["--ckpt", "a", "--streams={}"]
    assert streams_flag(["--streams", "false"]) == ["--streams=null"]
    assert streams_flag(["--streams.snr_db", "5"]) == ["--streams.snr_db", "5"]


def test_evaluate_streams_end_to_end_on_a_tiny_open_set_corpus(tmp_path: Path) -> None:
    from speechrnn.evaluate import main as evaluate
    from speechrnn.fit import main as fit

    manifest, _ = write_words(tmp_path / "corpus", speakers=6, per_class=3)
    fit([
        "--data", "AudioFolderDataModule", "--data.manifest", str(manifest), "--data.keywords", "[up, down]",
        "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "8", "--data.features.normalize", "utterance",
        "--model.hidden_size", "16", "--model.num_layers", "1", "--trainer.max_epochs", "4",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    checkpoint = next((tmp_path / "runs").rglob("last.ckpt"))
    before = checkpoint.read_bytes()
    options = ["--streams.negative_hours", "0.01", "--streams.calibration_negative_hours", "0.01",
               "--streams.keywords_per_stream", "3", "--streams.hop_s", "0.2"]  # fmt: skip
    metrics = evaluate(["--streams", "--ckpt", str(checkpoint), "--out", str(tmp_path / "report"), *options])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    streams = report["streams"]
    assert report["accuracy"] == metrics["accuracy"] and streams == json.loads(json.dumps(metrics["streams"]))
    calibrated = checkpoint.with_name("calibrated.ckpt")
    assert streams["calibrated_checkpoint"] == str(calibrated) and checkpoint.read_bytes() == before
    stored = torch.load(calibrated, weights_only=True)["data_config"]["spotting"]
    assert set(stored["thresholds"]) == {"up", "down"} and stored["target_fa_per_hour"] == 0.5
    assert stored["temperature"] > 0 and stored["calibration"]["split"] == "val"
    assert set(streams["at_fa_per_hour"]) == {"0.5", "1.0", "2.0"}
    assert streams["streams"]["keywords_placed"] == 6 and streams["negative_hours"] == pytest.approx(0.01)
    assert 0 <= streams["stored_thresholds"]["frr"] <= 1 and math.isfinite(streams["temperature"])
    assert (tmp_path / "report" / "det_curve.png").read_bytes().startswith(b"\x89PNG")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.startswith("# AudioFolderDataModule: test split") and "## Keyword spotting in streams" in markdown
    with open(tmp_path / "report" / "stream_truth.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    # the calibrated checkpoint is evaluated as it is: no calibration again
    again = evaluate(["--streams", "--ckpt", str(calibrated), "--out", str(tmp_path / "again"), *options])["streams"]
    assert again["calibrated_checkpoint"] is None and again["thresholds"] == stored["thresholds"]
    assert again["stored_thresholds"] == streams["stored_thresholds"]
