"""Tests of the synthetic-commands generator."""

from __future__ import annotations

import csv
import json
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechrnn.data.corpora.synthetic import generator as synthesis
from speechrnn.data.corpora.synthetic.generator import (
    ORDER_PAIRS,
    PHONES,
    SAMPLE_RATE,
    WORDS,
    SyntheticCorpusConfig,
    corpus_is_current,
    generate_corpus,
    render_clip,
    speaker_profile,
    synthesize_clip,
    synthesize_segments,
    synthesize_word,
)

SMALL = SyntheticCorpusConfig(num_speakers=3, repetitions=1, val_speakers=1, test_speakers=1)


def _read_manifest(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (root / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _wav_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def _dominant_f0(x: np.ndarray, sample_rate: int, fmin: float = 70.0, fmax: float = 300.0) -> float:
    x = x - x.mean()
    spectrum = np.fft.rfft(x, 2 * len(x))
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2)[: len(x)]
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    return sample_rate / (lo + int(np.argmax(autocorrelation[lo:hi])))


def _spectral_centroid(x: np.ndarray, sample_rate: int) -> float:
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    frequencies = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return float(np.sum(frequencies * power) / np.sum(power))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "corpus"
    generate_corpus(root, SMALL, num_workers=1)
    return root


def test_vocabulary_has_order_pairs_with_identical_segments() -> None:
    assert len(WORDS) >= 12
    for word, segments in WORDS.items():
        assert 2 <= len(segments) <= 4, word
        assert all(segment in PHONES for segment in segments), word
    assert len(ORDER_PAIRS) >= 3
    paired = [word for pair in ORDER_PAIRS for word in pair]
    assert len(paired) == len(set(paired))
    for first, second in ORDER_PAIRS:
        assert Counter(WORDS[first]) == Counter(WORDS[second])
        assert WORDS[first] != WORDS[second]
    multisets = Counter(frozenset(Counter(segments).items()) for segments in WORDS.values())
    assert sum(count == 2 for count in multisets.values()) == len(ORDER_PAIRS)
    assert max(multisets.values()) == 2


def test_default_config_size_and_splits() -> None:
    config = SyntheticCorpusConfig()
    assert config.num_speakers >= 24
    assert 2500 <= config.num_clips <= 3500
    assert config.num_clips == config.num_speakers * len(WORDS) * config.repetitions
    splits = Counter(synthesis.speaker_split(config, s) for s in range(config.num_speakers))
    assert splits == {"train": 20, "val": 5, "test": 5}
    assert SyntheticCorpusConfig.for_clip_count(10_000).num_clips >= 10_000


def test_speaker_profiles_span_voices_within_limits() -> None:
    config = SyntheticCorpusConfig()
    profiles = [speaker_profile(config, s) for s in range(config.num_speakers)]
    f0 = np.array([p.f0 for p in profiles])
    scale = np.array([p.formant_scale for p in profiles])
    assert f0.min() >= 80 and f0.max() <= 260
    assert f0.max() - f0.min() > 120
    assert scale.min() >= 0.85 and scale.max() <= 1.15
    assert all(0.8 <= p.duration_scale <= 1.25 for p in profiles)
    assert all(-6 <= p.gain_db <= 6 for p in profiles)
    assert {p.register for p in profiles} == {"low", "mid", "high"}
    assert profiles[3] == speaker_profile(config, 3)
    assert profiles[3] != speaker_profile(SyntheticCorpusConfig(seed=1), 3)


def test_synthesize_clip_is_deterministic_and_order_independent() -> None:
    first = synthesize_clip(SMALL, 1, "asi", 0)
    second = synthesize_clip(SMALL, 2, "isa", 0)
    assert np.array_equal(synthesize_clip(SMALL, 2, "isa", 0), second)
    assert np.array_equal(synthesize_clip(SMALL, 1, "asi", 0), first)
    assert first.dtype == np.float32
    assert not np.array_equal(synthesize_clip(SMALL, 1, "asi", 1), first)
    reseeded = SyntheticCorpusConfig(num_speakers=3, repetitions=1, val_speakers=1, test_speakers=1, seed=5)
    assert not np.array_equal(synthesize_clip(reseeded, 1, "asi", 0), first)


@pytest.mark.parametrize("speaker", [0, 1, 2, 6])
def test_vowel_is_pitched_at_the_speaker_f0(speaker: int) -> None:
    profile = speaker_profile(SyntheticCorpusConfig(), speaker)
    vowel = synthesize_segments(("a", "a", "a"), profile, np.random.default_rng(speaker))
    middle = vowel[len(vowel) // 2 - 1024 : len(vowel) // 2 + 1024].astype(np.float64)
    assert _dominant_f0(middle, SAMPLE_RATE) == pytest.approx(profile.f0, rel=0.12)


def test_fricatives_are_high_frequency_noise_and_vowels_low() -> None:
    profile = speaker_profile(SyntheticCorpusConfig(), 4)
    centroid = {
        name: _spectral_centroid(synthesize_segments((name,), profile, np.random.default_rng(0)), SAMPLE_RATE)
        for name in ("s", "sh", "a", "i")
    }
    assert centroid["s"] > 4000
    assert 2500 < centroid["sh"] < centroid["s"]
    assert centroid["a"] < 1500
    assert centroid["i"] < 1500


def test_word_has_smooth_onset_and_offset() -> None:
    profile = speaker_profile(SMALL, 0)
    for word in WORDS:
        audio = synthesize_word(word, profile, np.random.default_rng(1))
        peak = np.max(np.abs(audio))
        assert np.max(np.abs(audio[:8])) < 0.02 * peak, word
        assert np.max(np.abs(audio[-8:])) < 0.05 * peak, word
        assert len(audio) < synthesis.MAX_WORD_SECONDS * SAMPLE_RATE


def test_order_pairs_share_durations_but_render_differently() -> None:
    profile = speaker_profile(SMALL, 1)
    for first, second in ORDER_PAIRS:
        expected = [sum(PHONES[name].duration for name in WORDS[word]) for word in (first, second)]
        assert expected[0] == pytest.approx(expected[1])
        a = synthesize_word(first, profile, np.random.default_rng(7))
        b = synthesize_word(second, profile, np.random.default_rng(7))
        assert a.shape != b.shape or not np.allclose(a, b)


def test_clip_layout_onset_and_snr() -> None:
    config = SyntheticCorpusConfig()
    length = round(config.clip_seconds * SAMPLE_RATE)
    for speaker, word in [(0, "asi"), (1, "kilo"), (2, "stop"), (3, "fur"), (0, "shut"), (1, "nap")]:
        clip = render_clip(config, speaker, word, 0)
        assert clip.audio.shape == (length,)
        assert 0.0 <= clip.onset_seconds <= config.onset_window_seconds
        assert clip.onset_seconds + clip.word_seconds <= config.clip_seconds
        assert 5.0 <= clip.snr_db <= 30.0
        start = round(clip.onset_seconds * SAMPLE_RATE)
        stop = start + round(clip.word_seconds * SAMPLE_RATE)
        audio = clip.audio.astype(np.float64)
        inside = np.mean(audio[start:stop] ** 2)
        outside = np.mean(np.concatenate([audio[:start], audio[stop:]]) ** 2)
        measured = 10 * np.log10(inside / outside - 1.0)
        assert measured == pytest.approx(clip.snr_db, abs=2.0), (speaker, word)
        assert np.max(np.abs(audio)) <= 1.0


def test_speech_span_covers_the_audible_word_and_skips_a_leading_closure() -> None:
    config = SyntheticCorpusConfig(snr_db=(30.0, 30.0))
    for speaker, word in [(0, "asi"), (1, "pan"), (2, "kilo"), (3, "fur"), (4, "stop")]:
        clip = render_clip(config, speaker, word, 0)
        start, end = clip.speech
        assert clip.onset_seconds < start < end <= clip.onset_seconds + clip.word_seconds
        closure = start - clip.onset_seconds
        assert (closure > 0.03) == (WORDS[word][0] in {"p", "t", "k"}), (word, closure)
        audio = clip.audio.astype(np.float64)
        a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        before = audio[: round(clip.onset_seconds * SAMPLE_RATE)]
        speech_level = np.sqrt(np.mean(audio[a:b] ** 2))
        if len(before) > 800:
            assert speech_level > 10 * np.sqrt(np.mean(before**2)), word
        assert np.sqrt(np.mean(audio[a : a + 320] ** 2)) > 2 * np.sqrt(np.mean(before**2) if len(before) else 0), word


def test_manifest_segments_are_each_clips_speech_span(small_corpus: Path) -> None:
    _, rows = _read_manifest(small_corpus)
    for row in rows[:: max(1, len(rows) // 6)]:
        speaker = int(row["speaker"].removeprefix("spk"))
        clip = render_clip(SMALL, speaker, row["label"], 0)
        start, end = (float(x) for x in row["segments"].split("-"))
        assert (start, end) == pytest.approx(clip.speech, abs=1e-4)


def test_generated_corpus_layout(small_corpus: Path) -> None:
    columns, rows = _read_manifest(small_corpus)
    assert columns == ["path", "label", "speaker", "split", "segments"]
    assert len(rows) == SMALL.num_clips
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    speakers_by_split: dict[str, set[str]] = {}
    for row in rows:
        assert row["label"] in WORDS
        assert row["path"].startswith(row["label"] + "/")
        assert row["speaker"] in {f"spk{i:02d}" for i in range(SMALL.num_speakers)}
        speakers_by_split.setdefault(row["split"], set()).add(row["speaker"])
    assert set(speakers_by_split) == {"train", "val", "test"}
    assert [len(speakers_by_split[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert not speakers_by_split["train"] & (speakers_by_split["val"] | speakers_by_split["test"])
    assert not speakers_by_split["val"] & speakers_by_split["test"]

    info = sf.info(str(small_corpus / rows[0]["path"]))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert info.frames == round(SMALL.clip_seconds * SAMPLE_RATE)

    metadata = json.loads((small_corpus / "generation.json").read_text())
    assert metadata["fingerprint"] == SMALL.fingerprint()
    assert metadata["config"]["num_speakers"] == SMALL.num_speakers
    assert metadata["splits"]["test"] == ["spk02"]
    assert corpus_is_current(small_corpus, SMALL)


def test_generation_is_byte_identical_across_runs_and_workers(small_corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_corpus(again, SMALL, num_workers=2)
    assert _wav_bytes(again) == _wav_bytes(small_corpus)
    assert (again / "manifest.csv").read_bytes() == (small_corpus / "manifest.csv").read_bytes()

    reseeded = SyntheticCorpusConfig(num_speakers=3, repetitions=1, val_speakers=1, test_speakers=1, seed=1)
    other = tmp_path / "other"
    generate_corpus(other, reseeded, num_workers=1)
    assert _wav_bytes(other).keys() == _wav_bytes(small_corpus).keys()
    assert all(a != b for a, b in zip(_wav_bytes(other).values(), _wav_bytes(small_corpus).values(), strict=True))


def test_generation_is_idempotent(small_corpus: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small_corpus.rglob("*") if p.is_file()}
    assert generate_corpus(small_corpus, SMALL, num_workers=1) == small_corpus / "manifest.csv"
    after = {p: p.stat().st_mtime_ns for p in small_corpus.rglob("*") if p.is_file()}
    assert after == before


def test_changed_parameters_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    generate_corpus(root, SMALL, num_workers=1)
    bigger = SyntheticCorpusConfig(num_speakers=3, repetitions=2, val_speakers=1, test_speakers=1)
    assert not corpus_is_current(root, bigger)
    generate_corpus(root, bigger, num_workers=1)
    assert corpus_is_current(root, bigger) and not corpus_is_current(root, SMALL)
    assert len(_read_manifest(root)[1]) == bigger.num_clips
    assert len(list(root.rglob("*.wav"))) == bigger.num_clips
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_incomplete_corpus_and_leftover_temp_dir_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    generate_corpus(root, SMALL, num_workers=1)
    victim = next(root.rglob("*.wav"))
    victim.unlink()
    assert not corpus_is_current(root, SMALL)
    generate_corpus(root, SMALL, num_workers=1)
    assert victim.is_file() and corpus_is_current(root, SMALL)

    (root / "generation.json").unlink()
    stale = tmp_path / f".corpus.tmp-{socket.gethostname()}-999999999-0badc0de"  # a dead process's build
    (stale / "asi").mkdir(parents=True)
    (stale / "manifest.csv").write_text("path,label,speaker,split\n")
    assert not corpus_is_current(root, SMALL)
    generate_corpus(root, SMALL, num_workers=1)
    assert corpus_is_current(root, SMALL)
    assert not stale.exists()


def test_fingerprint_is_stable_and_sensitive() -> None:
    default = SyntheticCorpusConfig()
    assert default.fingerprint() == SyntheticCorpusConfig(snr_db=(5, 30)).fingerprint()
    assert len(default.fingerprint()) == 64
    assert default.fingerprint() != SyntheticCorpusConfig(seed=1).fingerprint()
    assert default.fingerprint() != SyntheticCorpusConfig(clip_seconds=2.0).fingerprint()


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"num_speakers": 0}, "num_speakers"),
        ({"num_speakers": 2.5}, "num_speakers"),
        ({"repetitions": 0}, "repetitions"),
        ({"val_speakers": -1}, "val_speakers"),
        ({"num_speakers": 10, "val_speakers": 5, "test_speakers": 5}, "val_speakers"),
        ({"snr_db": (30.0, 5.0)}, "snr_db"),
        ({"snr_db": "loud"}, "snr_db"),
        ({"clip_seconds": 0.3}, "clip_seconds"),
        ({"onset_window_seconds": -0.5}, "onset_window_seconds"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_config_names_the_option(overrides: dict[str, object], option: str) -> None:
    with pytest.raises((ValueError, TypeError), match=option):
        SyntheticCorpusConfig(**overrides)  # type: ignore[arg-type]


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="word"):
        synthesize_clip(SMALL, 0, "hello", 0)
    with pytest.raises(ValueError, match="speaker"):
        speaker_profile(SMALL, SMALL.num_speakers)
    with pytest.raises(ValueError, match="num_workers"):
        generate_corpus(tmp_path / "corpus", SMALL, num_workers=0)
