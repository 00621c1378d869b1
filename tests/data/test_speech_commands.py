from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.data.corpora import speech_commands as sc
from speechrnn.data.corpora.speech_commands import (
    COMMANDS,
    SILENCE,
    UNKNOWN,
    WORDS_V1,
    WORDS_V2,
    SpeechCommandsDataModule,
)

SPEAKERS = ("0a1b2c3d", "1f00ba47", "2c0ffee0", "3dead00d")
TRAIN_SPEAKER_IN_TEST = "0a1b2c3d"


def write_speech_commands(root: Path, version: int = 2, words: tuple[str, ...] | None = None, seed: int = 0) -> Path:
    """A tiny corpus in torchaudio's layout: every word of ``version`` (or ``words``) from four
    speakers, one or two short 16 kHz clips each, background noise, and official split lists
    (speaker 2 is validation, speaker 3 test, plus one clip of speaker 0 listed for test)."""
    corpus = root / "SpeechCommands" / f"speech_commands_v0.0{version}"
    rng = np.random.default_rng(seed)
    val, test = [], []
    for number, word in enumerate(words or (WORDS_V1 if version == 1 else WORDS_V2)):
        (corpus / word).mkdir(parents=True, exist_ok=True)
        for s, speaker in enumerate(SPEAKERS):
            for n in range(1 + (s == 0)):
                t = np.arange(int(rng.uniform(0.2, 0.4) * 16000)) / 16000
                wave = np.sin(2 * np.pi * (150 + 20 * number) * t) * np.hanning(len(t))
                wave = (0.3 * wave + 0.005 * rng.standard_normal(len(t))).astype(np.float32)
                relative = f"{word}/{speaker}_nohash_{n}.wav"
                sf.write(corpus / relative, wave, 16000)
                if s == 2:
                    val.append(relative)
                elif s == 3 or (s == 0 and n == 1 and number % 5 == 0):
                    test.append(relative)
        sf.write(corpus / word / "stray.wav", np.full(800, 0.1, np.float32), 16000)  # no _nohash_: ignored
    (corpus / "validation_list.txt").write_text("\n".join(val) + "\n")
    (corpus / "testing_list.txt").write_text("\n".join([*test, "yes/gone_nohash_0.wav"]) + "\n")
    (corpus / "README.md").write_text("fake")
    noise = corpus / "_background_noise_"
    noise.mkdir()
    sf.write(noise / "white_noise.wav", 0.2 * rng.standard_normal(int(3.2 * 16000)).astype(np.float32), 16000)
    hum = 0.1 * np.sin(2 * np.pi * 60 * np.arange(int(3.5 * 16000)) / 16000) + 0.01 * rng.standard_normal(56000)
    sf.write(noise / "hum.wav", hum.astype(np.float32), 16000)
    (noise / "README.md").write_text("noise")
    return corpus


@pytest.fixture(scope="module")
def fake_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a fake v2 corpus, read-only for the tests (``_silence_`` clips go to the cache)."""
    root = tmp_path_factory.mktemp("sc")
    write_speech_commands(root, version=2)
    return root


def listed(corpus: Path, name: str) -> set[str]:
    return {line for line in (corpus / name).read_text().split() if (corpus / line).is_file()}


def relative(record, corpus: Path) -> str:
    return Path(record.source).relative_to(corpus).as_posix()


def test_class_names_are_known_without_disk_access() -> None:
    assert SpeechCommandsDataModule(root="/nowhere", version=1).class_names == sorted(WORDS_V1)
    v2 = SpeechCommandsDataModule(root="/nowhere").class_names
    assert v2 == sorted(WORDS_V2) and len(v2) == 35 and len(WORDS_V1) == 30
    twelve = SpeechCommandsDataModule(root="/nowhere", task="12class").class_names
    assert len(twelve) == 12 and set(twelve) == {*COMMANDS, SILENCE, UNKNOWN} and twelve == sorted(twelve)
    assert SILENCE not in SpeechCommandsDataModule(task="12class", silence_fraction=0).class_names
    assert SpeechCommandsDataModule().features.sample_rate == 16000
    with pytest.raises(ValueError, match="version"):
        SpeechCommandsDataModule(version=3)  # type: ignore[arg-type]


def test_official_split_lists_are_honoured_exactly(fake_v2: Path) -> None:
    dm = SpeechCommandsDataModule(root=fake_v2)
    corpus = dm.corpus_dir
    by_split = {s: {relative(r, corpus) for r in dm.records if r.split == s} for s in ("train", "val", "test")}
    assert by_split["test"] == listed(corpus, "testing_list.txt")
    assert by_split["val"] == listed(corpus, "validation_list.txt")
    assert len(by_split["train"]) == 35 * 2 + 28  # speakers 0 (two clips each) and 1, less 7 listed for test
    assert not by_split["train"] & by_split["test"] and f"bed/{TRAIN_SPEAKER_IN_TEST}_nohash_1.wav" in by_split["test"]
    assert {r.speaker for r in dm.records} == set(SPEAKERS)
    assert all(Path(r.source).name.startswith(f"{r.speaker}_nohash_") for r in dm.records)
    assert all(Path(r.source).parent.name == r.label for r in dm.records)
    assert not any("stray" in r.source or "_background_noise_" in r.source for r in dm.records)


def test_listing_agrees_with_torchaudio_speechcommands(fake_v2: Path) -> None:
    from torchaudio.datasets import SPEECHCOMMANDS

    dm = SpeechCommandsDataModule(root=fake_v2)
    for subset, split in (("training", "train"), ("validation", "val"), ("testing", "test")):
        reference = SPEECHCOMMANDS(fake_v2, download=False, subset=subset)
        metadata = [reference.get_metadata(i) for i in range(len(reference))]
        expected = {(Path(path).as_posix(), label, speaker) for path, _, label, speaker, _ in metadata}
        expected = {item for item in expected if (fake_v2 / "SpeechCommands" / item[0]).is_file()}
        mine = {
            (f"speech_commands_v0.02/{relative(r, dm.corpus_dir)}", r.label, r.speaker)
            for r in dm.records
            if r.split == split
        }
        assert mine == expected


def test_twelve_class_task_samples_unknown_within_splits_and_cuts_silence(fake_v2: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    options = {"root": fake_v2, "task": "12class", "unknown_fraction": 0.5, "silence_fraction": 0.3, "cache_dir": cache}
    dm = SpeechCommandsDataModule(**options)
    records = dm.records
    assert {r.label for r in records} == set(dm.class_names)
    official = {**dict.fromkeys(listed(dm.corpus_dir, "validation_list.txt"), "val")}
    official.update(dict.fromkeys(listed(dm.corpus_dir, "testing_list.txt"), "test"))
    keywords = Counter(r.split for r in records if r.label in COMMANDS)
    for split in ("train", "val", "test"):
        unknown = [r for r in records if r.label == UNKNOWN and r.split == split]
        silence = [r for r in records if r.label == SILENCE and r.split == split]
        assert len(unknown) == math.ceil(0.5 * keywords[split]) and len(silence) == math.ceil(0.3 * keywords[split])
        for record in unknown:
            assert Path(record.source).parent.name not in COMMANDS
            assert official.get(relative(record, dm.corpus_dir), "train") == split
        for record in silence:
            info = sf.info(record.source)
            assert (
                info.samplerate == 16000
                and info.frames == 16000
                and record.speaker == f"_silence_/{Path(record.source).stem}"
            )
    again = SpeechCommandsDataModule(**options)
    silence_files = [r.source for r in records if r.label == SILENCE]
    mtimes = [os.stat(f).st_mtime_ns for f in silence_files]
    assert again.records == records and [os.stat(f).st_mtime_ns for f in silence_files] == mtimes
    other = SpeechCommandsDataModule(**options, seed=1)
    assert other.records != records
    assert {Path(f).parent.parent for f in silence_files} == {cache / SILENCE}
    assert not (fake_v2 / SILENCE).exists()  # the corpus folder is never written
    assert Path(silence_files[0]).parent.name.startswith("speech_commands_v0.02-")
    assert not list((cache / SILENCE).glob(".*"))  # no temporary folders left


def test_silence_regions_are_disjoint_and_fit_a_clip() -> None:
    regions = sc.silence_regions(60 * 16000, {"train": 800, "val": 100, "test": 100}, 16000)
    assert regions is not None and list(regions) == ["train", "val", "test"]
    assert regions["train"][0] == 0 and regions["test"][1] == 60 * 16000
    assert regions["train"][1] == regions["val"][0] and regions["val"][1] == regions["test"][0]
    assert all(end - start >= 16000 for start, end in regions.values())
    assert regions["train"][1] - regions["train"][0] > 40 * 16000
    assert sc.silence_regions(2 * 16000, {"train": 1, "val": 1, "test": 1}, 16000) is None
    assert sc.silence_regions(2 * 16000, {"train": 1, "val": 0, "test": 1}, 16000) is not None


def test_twelve_class_batches_have_the_documented_structure(fake_v2: Path, tmp_path: Path) -> None:
    dm = SpeechCommandsDataModule(root=fake_v2, task="12class", cache_dir=tmp_path / "cache", batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert all(len(dm.splits[s]) > 0 for s in ("train", "val", "test"))
    features, lengths, labels, indices = next(iter(dm.train_dataloader()))
    assert features.dtype == torch.float32 and features.shape[2] == 39 and features.shape[0] <= 8
    assert features.shape[1] == int(lengths.max()) and lengths.dtype == torch.int64
    assert labels.dtype == torch.int64 and indices.dtype == torch.int64
    for row in range(len(indices)):
        record = dm.record_of(int(indices[row]))
        assert record.split == "train" and dm.class_names[int(labels[row])] == record.label
        assert torch.all(features[row, int(lengths[row]) :] == 0)
    train_labels = {dm.record_of(int(i)).label for i in dm.splits["train"]}
    assert train_labels == set(dm.class_names)


def test_version_1_all_words_trains(tmp_path: Path) -> None:
    write_speech_commands(tmp_path, version=1)
    dm = SpeechCommandsDataModule(root=tmp_path, version=1, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 30 and {r.label for r in dm.records} == set(WORDS_V1)
    features, lengths, labels, indices = next(iter(dm.train_dataloader()))
    assert int(labels.max()) < 30 and len(indices) == len(lengths)


def test_corpus_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        SpeechCommandsDataModule(root=tmp_path).load_records()
    corpus = write_speech_commands(tmp_path, version=1, words=("yes", "no", "zebra"))
    with pytest.raises(ValueError, match=r"\['zebra'\]"):
        SpeechCommandsDataModule(root=tmp_path, version=1).load_records()
    twelve = SpeechCommandsDataModule(root=tmp_path, version=1, task="12class", cache_dir=tmp_path / "cache")
    assert {r.label for r in twelve.records} >= {UNKNOWN}
    (corpus / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list.txt"):
        SpeechCommandsDataModule(root=tmp_path, version=1).load_records()


def test_download_uses_torchaudio_and_places_the_corpus_once(tmp_path: Path, monkeypatch) -> None:
    import torchaudio.datasets

    calls = []

    class FakeSpeechCommands:
        def __init__(self, root, url, download):
            calls.append((Path(root), url, download))
            write_speech_commands(Path(root), version=int(url[-1]), words=("yes", "no"))

    monkeypatch.setattr(torchaudio.datasets, "SPEECHCOMMANDS", FakeSpeechCommands)
    root = tmp_path / "speech_commands"
    target = sc.download_speech_commands(root, 1)
    assert calls == [(root / ".download", "speech_commands_v0.01", True)]
    assert target == root / "SpeechCommands" / "speech_commands_v0.01" and (target / "yes").is_dir()
    assert sorted(p.name for p in root.iterdir()) == ["SpeechCommands"]
    sc.download_speech_commands(root, 1)
    assert len(calls) == 1
