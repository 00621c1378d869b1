from __future__ import annotations

import io
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechrnn.data.corpora.fsdd as fsdd
from speechrnn.data.corpora.fsdd import FSDDDataModule
from tests.conftest import REAL_DATA

SHARED_FSDD = REAL_DATA / "fsdd" / "recordings"
DIGITS = [str(d) for d in range(10)]


def digit_clip(digit: int, rng: np.random.Generator, sample_rate: int = 8000) -> np.ndarray:
    """A short tone whose pitch names the digit, with a little noise."""
    t = np.arange(int(rng.uniform(0.12, 0.3) * sample_rate)) / sample_rate
    wave = np.sin(2 * np.pi * (200 + 40 * digit) * t) * np.hanning(len(t))
    return (0.3 * wave + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def write_fsdd(folder: Path, speakers: tuple[str, ...] = ("alice", "bob", "carol"), indices: int = 8) -> Path:
    """``{digit}_{speaker}_{index}.wav`` files at 8 kHz, like the real dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for digit in range(10):
        for speaker in speakers:
            for index in range(indices):
                sf.write(folder / f"{digit}_{speaker}_{index}.wav", digit_clip(digit, rng), 8000)
    return folder


@pytest.fixture(scope="module")
def fake_fsdd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for the tests: 3 speakers x 10 digits x recordings 0-7."""
    return write_fsdd(tmp_path_factory.mktemp("fsdd") / "recordings")


def index_of(source: str) -> int:
    return int(Path(source).stem.rsplit("_", 1)[1])


def test_class_names_need_no_disk_access() -> None:
    dm = FSDDDataModule(root="/nonexistent/fsdd")
    assert dm.class_names == DIGITS and dm.num_classes == 10
    assert dm.features.sample_rate == 8000 and dm.name == "fsdd"


def test_official_split_puts_indices_0_to_4_in_test_and_a_stratified_seeded_val(fake_fsdd: Path) -> None:
    dm = FSDDDataModule(root=fake_fsdd)
    records = dm.records
    assert len(records) == 240 and dm.speakers == ["alice", "bob", "carol"]
    assert {r.label for r in records} == set(DIGITS)
    for record in records:
        assert (record.split == "test") == (index_of(record.source) <= 4)
        assert Path(record.source).name.startswith(f"{record.label}_{record.speaker}_")
    val_groups = Counter((r.label, r.speaker) for r in records if r.split == "val")
    assert len(val_groups) == 30 and set(val_groups.values()) == {1}  # 10% of 3, at least one per group
    same = [r.split for r in FSDDDataModule(root=fake_fsdd).records]
    other = [r.split for r in FSDDDataModule(root=fake_fsdd, seed=1).records]
    assert same == [r.split for r in records] and other != same


def test_speaker_split_holds_out_whole_speakers(fake_fsdd: Path) -> None:
    dm = FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["alice"], val_speakers=["bob"])
    speakers = {s: {r.speaker for r in dm.records if r.split == s} for s in ("train", "val", "test")}
    assert speakers == {"train": {"carol"}, "val": {"bob"}, "test": {"alice"}}

    dm = FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["alice"], val_fraction=0.25)
    assert {r.speaker for r in dm.records if r.split == "test"} == {"alice"}
    val = [r for r in dm.records if r.split == "val"]
    assert {r.speaker for r in val} == {"bob", "carol"}
    assert set(Counter((r.label, r.speaker) for r in val).values()) == {2}  # 25% of 8 per group


def test_speaker_split_options_are_checked(fake_fsdd: Path) -> None:
    with pytest.raises(ValueError, match="test_speakers"):
        FSDDDataModule(root=fake_fsdd, split="speaker")
    with pytest.raises(ValueError, match="split='speaker' only"):
        FSDDDataModule(root=fake_fsdd, test_speakers=["alice"])
    with pytest.raises(ValueError, match="both in test_speakers and val_speakers"):
        FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["alice"], val_speakers=["alice"])
    dm = FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["alice", "zed"], val_speakers=["yan"])
    with pytest.raises(ValueError, match=r"\['yan', 'zed'\]"):
        dm.load_records()


def test_other_names_are_ignored_and_an_empty_folder_is_named(tmp_path: Path) -> None:
    folder = write_fsdd(tmp_path / "rec", speakers=("al_ice",), indices=6)
    (folder / "README.md").write_text("not audio")
    sf.write(folder / "noise.wav", np.zeros(800, np.float32), 8000)
    sf.write(folder / "x_bob_1.wav", np.zeros(800, np.float32), 8000)
    records = FSDDDataModule(root=folder).records
    assert len(records) == 60 and {r.speaker for r in records} == {"al_ice"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        FSDDDataModule(root=empty).load_records()
    with pytest.raises(FileNotFoundError, match="download=True"):
        FSDDDataModule(root=tmp_path / "missing").load_records()


def test_standalone_usage_gives_documented_batches(fake_fsdd: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default cache_dir, data/cache, lands here
    dm = FSDDDataModule(root=fake_fsdd)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    features, lengths, labels, indices = batch
    assert features.dtype == torch.float32 and features.shape[2] == dm.feature_dim == 39
    assert lengths.dtype == torch.int64 and labels.dtype == torch.int64 and indices.dtype == torch.int64
    assert features.shape[0] == len(lengths) == len(labels) == len(indices) <= 32
    for row in range(len(indices)):
        record = dm.record_of(int(indices[row]))
        assert record.split == "train" and dm.class_names[int(labels[row])] == record.label
        assert int(lengths[row]) == sf.info(record.source).frames // 80 + 1  # 10 ms hop at 8 kHz
    assert (tmp_path / "data" / "cache").is_dir()
    sizes = {name: len(idx) for name, idx in dm.splits.items()}
    assert sizes == {"train": 60, "val": 30, "test": 150}


def zipped_fsdd(source: Path) -> bytes:
    """The GitHub archive's layout: ``free-spoken-digit-dataset-1.0.10/recordings/*.wav`` and more."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        top = "free-spoken-digit-dataset-1.0.10"
        archive.writestr(f"{top}/README.md", "FSDD")
        archive.writestr(f"{top}/utils/spectogramer.py", "print()")
        archive.writestr(f"{top}/recordings/../../evil_x_1.wav", b"no")
        for path in sorted(source.iterdir()):
            archive.write(path, f"{top}/recordings/{path.name}")
    return buffer.getvalue()


def test_download_extracts_recordings_once(tmp_path: Path, monkeypatch) -> None:
    payload = zipped_fsdd(write_fsdd(tmp_path / "upstream", speakers=("dan",), indices=6))
    fetched: list[str] = []

    def fake_fetch(url: str, destination: Path) -> None:
        fetched.append(url)
        destination.write_bytes(payload)

    monkeypatch.setattr(fsdd, "fetch_url", fake_fetch)
    root = tmp_path / "data" / "fsdd" / "recordings"
    dm = FSDDDataModule(root=root, download=True, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    assert fetched == [fsdd.FSDD_URL] and "v1.0.10" in fsdd.FSDD_URL
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in (tmp_path / "upstream").iterdir())
    assert sorted(p.name for p in root.parent.iterdir()) == ["recordings"]  # no temporary leftovers
    assert not list(tmp_path.rglob("evil*"))
    FSDDDataModule(root=root, download=True, cache_dir=tmp_path / "cache").prepare_data()
    assert len(fetched) == 1
    assert len(dm.records) == 60


def test_download_fills_an_empty_root_and_rejects_an_archive_without_recordings(tmp_path: Path, monkeypatch) -> None:
    payload = zipped_fsdd(write_fsdd(tmp_path / "upstream", speakers=("dan",), indices=1))
    monkeypatch.setattr(fsdd, "fetch_url", lambda url, destination: destination.write_bytes(payload))
    root = tmp_path / "empty"
    root.mkdir()
    assert len(list(fsdd.download_fsdd(root).glob("*.wav"))) == 10

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("top/README.md", "nothing here")
    monkeypatch.setattr(fsdd, "fetch_url", lambda url, destination: destination.write_bytes(buffer.getvalue()))
    with pytest.raises(ValueError, match="no recordings"):
        fsdd.download_fsdd(tmp_path / "other")
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".fsdd-download-*"))


@pytest.mark.skipif(not SHARED_FSDD.is_dir(), reason="shared FSDD recordings not present")
def test_real_fsdd_official_and_speaker_splits(tmp_path: Path) -> None:
    dm = FSDDDataModule(root=SHARED_FSDD, cache_dir=tmp_path / "cache")
    splits = Counter(r.split for r in dm.records)
    assert len(dm.speakers) == 5 and len(dm.records) == 2500
    assert splits == {"train": 2000, "val": 250, "test": 250}
    assert all((r.split == "test") == (index_of(r.source) <= 4) for r in dm.records)
    assert set(Counter((r.label, r.speaker) for r in dm.records if r.split == "val").values()) == {5}

    dm = FSDDDataModule(root=SHARED_FSDD, split="speaker", test_speakers=["theo"], cache_dir=tmp_path / "cache")
    test = [r for r in dm.records if r.split == "test"]
    assert len(test) == 500 and {r.speaker for r in test} == {"theo"}
    assert "theo" not in {r.speaker for r in dm.records if r.split != "test"}
    assert Counter(r.label for r in test) == {digit: 50 for digit in DIGITS}


def test_auto_val_speaker_is_a_seeded_training_speaker_and_validation_says_so(fake_fsdd: Path, tmp_path: Path) -> None:
    auto = FSDDDataModule(
        root=fake_fsdd, split="speaker", test_speakers=["carol"], val_speakers="auto", cache_dir=tmp_path / "c"
    )
    assert auto.val_speakers == [] and len(auto.records) == 240
    assert auto.val_speakers in (["alice"], ["bob"])
    by_split = {split: {r.speaker for r in auto.records if r.split == split} for split in ("train", "val", "test")}
    assert by_split["test"] == {"carol"} and by_split["val"] == set(auto.val_speakers)
    assert by_split["train"] == {"alice", "bob"} - by_split["val"]
    again = FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["carol"], val_speakers="auto")
    assert again.records == auto.records
    auto.setup("fit")
    assert auto.validation == f"speaker-disjoint (1 speaker(s) never heard in training: {auto.val_speakers[0]})"
    assert auto.data_config["validation"] == auto.validation
    shared = FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["carol"], cache_dir=tmp_path / "c")
    with pytest.warns(UserWarning, match="validation shares 2 of 2 speaker"):
        shared.setup("fit")
    with pytest.raises(ValueError, match="val_speakers='auto' needs two training speakers"):
        FSDDDataModule(root=fake_fsdd, split="speaker", test_speakers=["carol", "bob"], val_speakers="auto").records  # noqa: B018
