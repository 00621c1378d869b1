"""Open-set classes (keywords, ``_unknown_``, ``_silence_``) shared by every audio corpus."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from speechrnn.data import AudioFolderDataModule, SpeechCommandsDataModule, SyntheticCommandsDataModule
from speechrnn.data.corpora.folder import read_manifest
from speechrnn.data.corpora.synthetic.generator import (
    BACKGROUND_KINDS,
    OTHER_WORDS,
    WORDS,
    SyntheticCorpusConfig,
    generate_corpus,
    render_background,
)
from speechrnn.data.open_set import BACKGROUND_FOLDER, SILENCE, UNKNOWN
from speechrnn.errors import ConfigError, MissingInputError, UserInputError
from tests.conftest import write_corpus
from tests.data.test_speech_commands import write_speech_commands

SPLITS = ("train", "val", "test")


def write_background(folder: Path, seconds: tuple[float, ...] = (6.0, 5.0), seed: int = 7) -> Path:
    """White-noise background recordings (each sample unique, so a clip can be found in its file)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for number, length in enumerate(seconds):
        sf.write(folder / f"noise_{number}.wav", 0.3 * rng.uniform(-1, 1, round(length * 16000)), 16000)
    (folder / "notes.txt").write_text("not audio")
    return folder


def where_in(clip: np.ndarray, recording: np.ndarray) -> tuple[float, int]:
    """How well ``clip`` matches its best place in ``recording`` (normalised correlation), and that offset."""
    correlation = signal.correlate(recording, clip, mode="valid", method="fft")
    power = np.concatenate([[0.0], np.cumsum(recording**2)])
    energy = power[len(clip) :] - power[: -len(clip)]
    match = np.abs(correlation) / np.sqrt(energy * np.sum(clip**2) + 1e-12)
    return float(match.max()), int(np.argmax(match))


@pytest.fixture
def folder_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest of classes up, down and flat from 6 speakers (no split column) and a background folder."""
    return write_corpus(tmp_path / "corpus", speakers=6, per_class=3), write_background(tmp_path / "background")


def test_folder_corpus_keywords_unknown_and_silence(folder_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, background = folder_corpus
    options = {"manifest": manifest, "cache_dir": tmp_path / "cache", "keywords": ["up", "down"]}
    dm = AudioFolderDataModule(**options, unknown_fraction=0.3, background_dir=background, silence_fraction=0.5)
    assert dm.class_names == [SILENCE, UNKNOWN, "down", "up"]
    plain = AudioFolderDataModule(manifest=manifest)
    expected_splits = dict(zip((r.source for r in plain.records), plain.record_splits(plain.records), strict=True))
    records = dm.records
    assert all(r.split in SPLITS for r in records) and {r.label for r in records} == set(dm.class_names)
    keywords = Counter(r.split for r in records if r.label in ("up", "down"))
    assert sum(keywords.values()) == 2 * 18
    for split in SPLITS:
        unknown = [r for r in records if r.label == UNKNOWN and r.split == split]
        silence = [r for r in records if r.label == SILENCE and r.split == split]
        assert len(unknown) == math.ceil(0.3 * keywords[split]) and len(silence) == math.ceil(0.5 * keywords[split])
        assert all(Path(r.source).parent.name == "flat" and expected_splits[r.source] == split for r in unknown)
        assert all(r.speaker == f"{SILENCE}/{Path(r.source).stem}" for r in silence)
        assert all(sf.info(r.source).frames == 16000 for r in silence)
    for record in records:
        if record.label not in (SILENCE, UNKNOWN):
            assert expected_splits[record.source] == record.split  # the split the corpus would have had
    # every _silence_ clip is cut from its split's region of a background file; the regions are disjoint
    regions = {split: dm.background_recordings(split) for split in SPLITS}
    files = sorted(str(p) for p in background.glob("*.wav"))
    for path in files:
        spans = sorted((start, end) for split in SPLITS for file, start, end in regions[split] if file == path)
        assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == sf.info(path).frames
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    recordings = {path: sf.read(path)[0] for path in files}
    for record in (r for r in records if r.label == SILENCE):
        clip = sf.read(record.source)[0]
        (match, offset), file = max((where_in(clip, recordings[file]), file) for file in files)
        assert match > 0.99
        start, end = next((s, e) for f, s, e in regions[record.split] if f == file)
        assert start <= offset and offset + 16000 <= end, (record.source, file, offset)
    dm.prepare_data()
    dm.setup("fit")
    features, lengths, labels, indices = next(iter(dm.train_dataloader()))
    assert [dm.class_names[int(label)] for label in labels] == [dm.record_of(int(i)).label for i in indices]
    assert {dm.record_of(int(i)).label for i in dm.splits["train"]} == set(dm.class_names)
    keep_all = AudioFolderDataModule(**options, unknown_fraction=None, background_dir=background)
    assert Counter(r.label for r in keep_all.records)[UNKNOWN] == 18


def test_test_streams_hold_every_non_keyword_word_of_their_split(
    folder_corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    from speechrnn.spotting.streams import StreamSet, StreamSettings

    manifest, background = folder_corpus
    options = {"manifest": manifest, "cache_dir": tmp_path / "cache", "keywords": ["up", "down"]}
    dm = AudioFolderDataModule(**options, unknown_fraction=0.1, background_dir=background)
    plain = AudioFolderDataModule(manifest=manifest)
    split_of = dict(zip((r.source for r in plain.records), plain.record_splits(plain.records), strict=True))
    for split in SPLITS:
        expected = sorted(r.source for r in plain.records if r.label == "flat" and split_of[r.source] == split)
        sampled = [r.source for r in dm.records if r.label == UNKNOWN and r.split == split]
        assert sorted(r.source for r in dm.non_keyword_recordings(split)) == expected
        assert set(sampled) < set(expected)  # training sees a sample; the streams see them all
        streams = StreamSet.from_datamodule(dm, split, dm.class_names, 16000, StreamSettings(negative_hours=0.01))
        assert sorted(clip.path for clip in streams.unknown_clips) == expected
        assert {clip.label for clip in streams.unknown_clips} == {UNKNOWN}
    assert AudioFolderDataModule(manifest=manifest).non_keyword_recordings("test") == []
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        dm.non_keyword_recordings("dev")  # type: ignore[arg-type]


def test_without_open_set_options_records_are_the_corpus_own(folder_corpus: tuple[Path, Path]) -> None:
    manifest, _ = folder_corpus
    dm = AudioFolderDataModule(manifest=manifest)
    assert dm.records == read_manifest(manifest) and dm.class_names == ["down", "flat", "up"]
    with pytest.raises(ConfigError, match="no background recordings"):
        dm.background_recordings("test")


def test_background_dir_alone_adds_silence_and_own_background_folder_is_used(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    with_silence = AudioFolderDataModule(
        manifest=manifest, background_dir=write_background(tmp_path / "bg"), cache_dir=tmp_path / "cache"
    )
    # 24 training and 6 + 6 held-out clips (4 + 1 + 1 speakers): ceil(0.1 * n) silence clips per split
    assert Counter(r.label for r in with_silence.records) == {"up": 12, "down": 12, "flat": 12, SILENCE: 3 + 1 + 1}
    assert with_silence.class_names == [SILENCE, "down", "flat", "up"]
    assert all(Path(r.source).is_relative_to(tmp_path / "cache" / SILENCE) for r in with_silence.records[36:])
    write_background(tmp_path / "corpus" / BACKGROUND_FOLDER)
    own = AudioFolderDataModule(root=tmp_path / "corpus", keywords=["up"], cache_dir=tmp_path / "cache")
    assert own.class_names == [SILENCE, UNKNOWN, "up"] and {r.label for r in own.records} == set(own.class_names)
    assert own.background_recordings("val")[0][0].startswith(str(tmp_path / "corpus" / BACKGROUND_FOLDER))
    assert AudioFolderDataModule(root=tmp_path / "corpus").class_names == ["down", "flat", "up"]  # no keywords


# Record lists of SpeechCommandsDataModule(task="12class") on write_speech_commands(root, version=2) as
# the implementation before the shared open set (commit 83ae20e) gave them: count, sha256[:16] of
# json.dumps([(source relative to root, label, speaker, split, segments), ...]) and sha256[:16] of the
# _silence_ clips' bytes, in record order (computed with that commit's code by a scratch script).
BEFORE_SHARED_OPEN_SET = {
    (): (62, "2198e8b5f81c3a79", "190fbe0520fd83c6"),
    (("unknown_fraction", 0.5), ("silence_fraction", 0.3)): (92, "ba2f70ccc48e7f50", "91f8b35b8f3905e5"),
    (("unknown_fraction", 0.5), ("silence_fraction", 0.3), ("seed", 1)): (92, "c4b9d01f21f7397e", "a8b0d0951917053f"),
    (("unknown_fraction", 0.0), ("silence_fraction", 0.2)): (61, "1f0a7e06f311356c", "e5efd620a81384fe"),
}


def record_digest(root: Path, records: list) -> tuple[int, str, str]:
    def where(record) -> str:  # _silence_ clips now live in the cache, under the folder name they had beside the corpus
        path = Path(record.source)
        if record.label == SILENCE:
            return f"{SILENCE}/{path.parent.name}/{path.name}"
        return path.relative_to(root).as_posix()

    rows = [(where(r), r.label, r.speaker, r.split, r.segments) for r in records]
    silence = b"".join(Path(r.source).read_bytes() for r in records if r.label == SILENCE)
    return (
        len(rows),
        hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16],
        hashlib.sha256(silence).hexdigest()[:16],
    )


def test_speech_commands_twelve_class_records_are_unchanged(tmp_path: Path) -> None:
    write_speech_commands(tmp_path, version=2)
    for options, expected in BEFORE_SHARED_OPEN_SET.items():
        dm = SpeechCommandsDataModule(root=tmp_path, task="12class", cache_dir=tmp_path / "cache", **dict(options))
        assert record_digest(tmp_path, dm.records) == expected, options
    dm = SpeechCommandsDataModule(root=tmp_path, task="12class", cache_dir=tmp_path / "cache")
    assert all(Path(r.source).is_relative_to(tmp_path / "cache" / SILENCE) for r in dm.records if r.label == SILENCE)
    assert dm.keywords == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    regions = {split: dm.background_recordings(split) for split in SPLITS}
    assert [path for path, _, _ in regions["test"]] == [str(p) for p in sorted(dm.corpus_background_dir.glob("*.wav"))]
    assert all(regions["train"][i][2] == regions["val"][i][1] for i in range(2))
    all_words = SpeechCommandsDataModule(
        root=tmp_path, keywords=["yes", "bed"], unknown_fraction=None, cache_dir=tmp_path / "cache"
    )
    assert all_words.class_names == [SILENCE, UNKNOWN, "bed", "yes"]
    assert Counter(r.label for r in all_words.records)[UNKNOWN] == 33 * 5  # 33 other words, 5 clips each


def test_synthetic_open_set_corpus(tmp_path: Path) -> None:
    small = {"num_speakers": 4, "repetitions": 1, "val_speakers": 1, "test_speakers": 1, "generation_workers": 1}
    options = {**small, "open_set": True, "other_words": 2, "background_seconds": 8.0, "cache_dir": tmp_path / "c"}
    dm = SyntheticCommandsDataModule(root=tmp_path / "open", **options)
    others = list(OTHER_WORDS)[:2]
    commands = {*WORDS.values(), *(phones[::-1] for phones in WORDS.values())}
    assert not commands & set(OTHER_WORDS.values()) and not set(WORDS) & set(OTHER_WORDS)
    assert dm.class_names == sorted([*WORDS, UNKNOWN, SILENCE]) and dm.keywords == sorted(WORDS)
    records = dm.records
    unknown = [r for r in records if r.label == UNKNOWN]  # at most 0.1 of each split's keywords, rounded up
    assert Counter(r.split for r in unknown) == {"train": math.ceil(0.1 * 2 * 15), "val": 2, "test": 2}
    assert all(Path(r.source).parent.name in others for r in unknown)
    silence = [r for r in records if r.label == SILENCE]
    assert Counter(r.split for r in silence) == {"train": math.ceil(0.1 * 30), "val": 2, "test": 2}
    assert {sf.info(r.source).frames for r in silence} == {round(1.8 * 16000)}  # the corpus's clip length
    backgrounds = sorted((tmp_path / "open" / BACKGROUND_FOLDER).glob("*.wav"))
    assert [p.stem for p in backgrounds] == sorted(BACKGROUND_KINDS)
    assert all(sf.info(p).frames == 8 * 16000 for p in backgrounds)
    test = dm.background_recordings("test")
    assert len(test) == 4 and all(end == 8 * 16000 and start > 0 for _, start, end in test)
    assert dm.name != SyntheticCommandsDataModule(**small).name
    assert SyntheticCommandsDataModule(open_set=True).corpus_root != SyntheticCommandsDataModule().corpus_root
    config = SyntheticCorpusConfig(background_seconds=2.0)
    for kind in BACKGROUND_KINDS:
        audio = render_background(config, kind)
        assert audio.dtype == np.float32 and np.sqrt(np.mean(audio.astype(np.float64) ** 2)) == pytest.approx(0.02)
        assert np.array_equal(audio, render_background(config, kind))
        assert not np.array_equal(audio, render_background(SyntheticCorpusConfig(background_seconds=2.0, seed=1), kind))
    subset = SyntheticCommandsDataModule(
        root=tmp_path / "open", **options, keywords=["asi", "isa"], unknown_fraction=0.5
    )
    labels = Counter(r.label for r in subset.records)
    assert subset.class_names == [SILENCE, UNKNOWN, "asi", "isa"] and labels[UNKNOWN] == 2 + 1 + 1  # half of 4, 2, 2
    dm.prepare_data()
    dm.setup("fit")
    assert {dm.record_of(int(i)).label for i in dm.splits["train"]} == set(dm.class_names)


# The default corpus as the generator gave it before the open-set options (commit 83ae20e): the
# fingerprint of SyntheticCorpusConfig(), and for SMALL below sha256[:16] of manifest.csv, of
# generation.json and of every wav file's bytes in path order (computed with that commit's code).
DEFAULT_FINGERPRINT = "d8f1c6f578b72d71feb9c1ac5db28a526a1d3af937c18b82dfe8055055b7044d"
SMALL_BEFORE = ("c72ae8bf0c9714ea", "f456be1dc05b2a78", "8928dddb22a1e9f3")


def test_default_synthetic_corpus_is_unchanged(tmp_path: Path) -> None:
    assert SyntheticCorpusConfig().fingerprint() == DEFAULT_FINGERPRINT
    dm = SyntheticCommandsDataModule()
    assert dm.name == f"synthetic_commands-{DEFAULT_FINGERPRINT[:8]}" and dm.class_names == sorted(WORDS)
    assert dm.keywords is None and dm.background_dir is None and dm.corpus_root == Path("data/synthetic_commands")
    small = SyntheticCorpusConfig(num_speakers=3, repetitions=1, val_speakers=1, test_speakers=1)
    root = tmp_path / "small"
    generate_corpus(root, small, num_workers=1)
    wavs = b"".join(p.read_bytes() for p in sorted(root.rglob("*.wav")))
    digests = [hashlib.sha256(b).hexdigest()[:16] for b in ((root / "manifest.csv").read_bytes(),
               (root / "generation.json").read_bytes(), wavs)]  # fmt: skip
    assert tuple(digests) == SMALL_BEFORE and not (root / BACKGROUND_FOLDER).exists()
    loaded = SyntheticCommandsDataModule(root=root, num_speakers=3, repetitions=1, val_speakers=1, test_speakers=1)
    raw = read_manifest(root / "manifest.csv")
    assert loaded.records == raw and loaded.complete_records(raw) is raw  # same records, so the same cache key


def test_open_set_options_are_checked_with_one_line_errors(folder_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, background = folder_corpus
    for option, value in (("unknown_fraction", 1.0), ("unknown_fraction", -0.1), ("silence_fraction", 1.5)):
        with pytest.raises(ConfigError, match=rf"^{option} must be in \[0, 1\)"):
            AudioFolderDataModule(manifest=manifest, **{option: value})
    with pytest.raises(ConfigError, match="repeat"):
        AudioFolderDataModule(manifest=manifest, keywords=["up", "up"])
    with pytest.raises(ConfigError, match="_unknown_"):
        AudioFolderDataModule(manifest=manifest, keywords=["up", UNKNOWN])
    with pytest.raises(UserInputError, match=r"background_dir .*empty: no audio files"):
        AudioFolderDataModule(manifest=manifest, background_dir=write_background(tmp_path / "empty", seconds=()))
    with pytest.raises(MissingInputError, match="background_dir .*missing: background recordings folder not found"):
        AudioFolderDataModule(manifest=manifest, background_dir=tmp_path / "missing")
    with pytest.raises(UserInputError, match=r"keywords \['zebra'\] are not labels of the corpus"):
        AudioFolderDataModule(manifest=manifest, keywords=["up", "zebra"]).records  # noqa: B018
    with pytest.raises(UserInputError, match="every label is a keyword"):
        AudioFolderDataModule(manifest=manifest, keywords=["up", "down", "flat"]).records  # noqa: B018
    assert "_unknown_" not in AudioFolderDataModule(manifest=manifest, keywords=["up", "down", "flat"],
                                                    unknown_fraction=0).class_names  # fmt: skip
    with pytest.raises(ConfigError, match="task='12class' has its own keywords"):
        SpeechCommandsDataModule(task="12class", keywords=["yes"])
    with pytest.raises(ConfigError, match="voice_activity"):
        AudioFolderDataModule(manifest=manifest, voice_activity=True, keywords=["up"])
    with pytest.raises(ConfigError) as error:
        AudioFolderDataModule(manifest=manifest, unknown_fraction=2)
    assert "\n" not in str(error.value)


def test_fit_refuses_unknown_keywords_before_any_cache(folder_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    from speechrnn.fit import main as fit

    manifest, _ = folder_corpus
    args = ["--data", "AudioFolderDataModule", "--data.manifest", str(manifest), "--data.cache_dir",
            str(tmp_path / "cache"), "--data.keywords", "[up,zebra]", "--model.hidden_size", "8",
            "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    with pytest.raises(UserInputError, match=r"keywords \['zebra'\] are not labels"):
        fit(args)
    assert not (tmp_path / "cache").exists()


def test_background_noise_augmentation_mixes_in_the_training_regions_only(
    folder_corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, background = folder_corpus
    from speechrnn.data.augment import AugmentSettings

    options = {"manifest": manifest, "cache_dir": tmp_path / "cache", "keywords": ["up", "down"]}
    dm = AudioFolderDataModule(
        **options, background_dir=background, on_device_features=True, augment=AugmentSettings(background_noise=True)
    )
    noise = dm.training_background()
    regions = dm.background_recordings("train")
    expected = np.concatenate([sf.read(path, dtype="float32")[0][start:end] for path, start, end in regions])
    assert len(noise) == len(expected) and np.allclose(noise.numpy(), expected, atol=1e-4)
    for path, start, _ in dm.background_recordings("test"):  # no test background in the training noise
        assert (
            where_in(sf.read(path, dtype="float64")[0][start : start + 1600], noise.numpy().astype(np.float64))[0] < 0.5
        )
    assert torch.equal(dm.augmenter.noise, noise)
    with pytest.raises(ConfigError, match="no background"):
        no_background = AudioFolderDataModule(
            **{**options, "keywords": None}, augment=AugmentSettings(background_noise=True), on_device_features=True
        )
        assert no_background.augmenter is None
    with pytest.raises(ValueError, match="two sources of noise"):
        AugmentSettings(background_noise=True, noise_dir=str(background))
