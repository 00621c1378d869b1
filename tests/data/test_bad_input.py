"""Every kind of bad input, with on_error="raise" (stop before training, naming the file) and
on_error="skip" (leave it out, list it in skipped.csv beside the cache, count it)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechrnn.audio_io import AudioError
from speechrnn.data import AudioFolderDataModule
from tests.conftest import write_corpus


def garbage(path: Path) -> None:
    path.write_bytes(b"RIFF\x00\x00 definitely not audio")


def truncated(path: Path) -> None:
    sf.write(path, (0.3 * np.sin(np.arange(8000) / 7)).astype(np.float32), 16000)
    path.write_bytes(path.read_bytes()[: 44 + 4000])


def empty(path: Path) -> None:
    sf.write(path, np.zeros(0, np.float32), 16000)


def silent(path: Path) -> None:
    sf.write(path, np.zeros(8000, np.float32), 16000)


def too_short(path: Path) -> None:
    sf.write(path, np.full(100, 0.3, np.float32), 16000)


def with_nan(path: Path) -> None:
    sf.write(path, np.r_[np.full(4000, 0.2), np.nan].astype(np.float32), 16000, subtype="FLOAT")


def missing(path: Path) -> None:
    path.unlink(missing_ok=True)


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "unreadable": (garbage, "up/bad.wav", "cannot read audio"),
    "unknown format": (lambda p: p.write_text("hello"), "up/bad.mp3", "cannot read audio"),
    "truncated": (truncated, "up/bad.wav", "truncated file"),
    "empty": (empty, "up/bad.wav", "empty file"),
    "silent": (silent, "up/bad.wav", "silent"),
    "too short": (too_short, "up/bad.wav", "too short"),
    "NaN": (with_nan, "up/bad.wav", "NaN"),
    "listed but missing": (missing, "up/gone.wav", "file not found"),
}


def corpus_with(tmp_path: Path, make: Callable[[Path], None], relative: str) -> Path:
    manifest = write_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    bad = manifest.parent / relative
    make(bad)
    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerow([relative, "up", "spk0"])
    return manifest


@pytest.mark.parametrize("case", sorted(CASES))
def test_raise_names_the_file_and_the_problem_before_training(case: str, tmp_path: Path) -> None:
    make, relative, reason = CASES[case]
    manifest = corpus_with(tmp_path, make, relative)
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache")
    with pytest.raises(AudioError, match=reason) as info:
        dm.prepare_data()
    assert relative in str(info.value)
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.name.startswith("corpus-") for p in cache.iterdir())


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_leaves_the_file_out_and_lists_it(case: str, tmp_path: Path, capsys) -> None:
    make, relative, reason = CASES[case]
    manifest = corpus_with(tmp_path, make, relative)
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", on_error="skip")
    dm.prepare_data()
    dm.setup("fit")
    assert "skipped 1 bad file" in capsys.readouterr().out
    assert len(dm.store) == len(dm.records) - 1 == 24
    assert all(not dm.record_of(i).source.endswith(relative) for i in range(len(dm.store)))
    with open(dm.cache.directory / "skipped.csv") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["path"].endswith(relative) and reason in row["reason"]


def test_stereo_and_other_rates_are_never_errors(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "c", speakers=4, per_class=1)
    extra = manifest.parent / "up" / "stereo44k.flac"
    t = np.arange(22050) / 44100
    sf.write(extra, np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 300 * t)], 1) * 0.3, 44100)
    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerow(["up/stereo44k.flac", "up", "spk0"])
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache")
    dm.setup("fit")
    assert len(dm.store) == 13


def test_a_class_without_training_examples_is_named(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "c", speakers=3, per_class=1)
    rows = manifest.read_text().splitlines()
    split = {"spk0": "train", "spk1": "val", "spk2": "test"}
    kept = [rows[0] + ",split"] + [
        f"{row},{split[row.rsplit(',', 1)[1]]}" for row in rows[1:] if not (row.startswith("flat/") and "spk0" in row)
    ]
    manifest.write_text("\n".join(kept) + "\n")
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"classes with no training examples: \['flat'\]"):
        dm.setup("fit")


def test_a_split_with_no_data_is_named(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "c", speakers=2, per_class=1)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0] + ",split"] + [f"{r},train" for r in rows[1:]]) + "\n")
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache")
    dm.setup("fit")
    with pytest.raises(ValueError, match="the val split has no data"):
        dm.val_dataloader()
    all_bad = write_corpus(tmp_path / "d", speakers=4, per_class=1)
    for wav in all_bad.parent.rglob("*.wav"):
        silent(wav)
    dm = AudioFolderDataModule(manifest=all_bad, cache_dir=tmp_path / "cache2", on_error="skip")
    with pytest.raises(ValueError, match="the train split has no data"):
        dm.setup("fit")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_bad_file_found_by_a_cache_worker_process_is_reported_as_by_one_process(
    on_error: str, tmp_path: Path
) -> None:
    manifest = corpus_with(tmp_path, with_nan, "up/bad.wav")
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", on_error=on_error, cache_workers=2)
    if on_error == "raise":
        with pytest.raises(AudioError, match="NaN") as info:
            dm.prepare_data()
        assert "up/bad.wav" in str(info.value) and info.value.path.endswith("up/bad.wav")
        return
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.store) == len(dm.records) - 1
    with open(dm.cache.directory / "skipped.csv") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["path"].endswith("up/bad.wav") and "NaN" in row["reason"]
