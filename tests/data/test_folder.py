from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.data import AudioFolderDataModule
from speechrnn.data.records import Record
from speechrnn.data.splits import assign_splits
from speechrnn.features import FeatureSettings
from tests.conftest import CLASSES, write_corpus


def make(manifest: Path, tmp_path: Path, **kwargs) -> AudioFolderDataModule:
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", batch_size=4, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_are_padded_sequences_with_cpu_int64_lengths(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = make(tiny_corpus, tmp_path)
    assert dm.class_names == sorted(CLASSES) and dm.num_classes == 3 and dm.feature_dim == 39
    for features, lengths, labels, indices in dm.train_dataloader():
        assert features.dtype == torch.float32 and features.shape[0] == len(lengths) <= 4
        assert features.shape[2] == 39 and features.shape[1] == int(lengths.max())
        assert lengths.dtype == torch.int64 and lengths.device.type == "cpu"
        assert labels.dtype == torch.int64 and indices.dtype == torch.int64
        for row, length in enumerate(lengths.tolist()):
            assert torch.all(features[row, length:] == 0)
            assert torch.any(features[row, :length] != 0)
            record = dm.record_of(int(indices[row]))
            assert dm.class_names[int(labels[row])] == record.label
            assert length == len(dm.store[int(indices[row])])


def test_frame_counts_follow_the_hop_and_each_clip_is_normalised(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = make(tiny_corpus, tmp_path, features=FeatureSettings(normalize="utterance"))
    record = dm.record_of(0)
    samples = sf.info(record.source).frames
    assert dm.store.lengths[0] == samples // 160 + 1
    frames = np.asarray(dm.store[0])
    np.testing.assert_allclose(frames.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(frames.std(0), 1, atol=1e-2)


def test_splits_are_speaker_disjoint_and_cover_every_file(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = make(tiny_corpus, tmp_path)
    speakers = {name: {dm.record_of(i).speaker for i in idx} for name, idx in dm.splits.items()}
    assert speakers["train"] and speakers["val"] and speakers["test"]
    assert not speakers["train"] & speakers["val"] and not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    assert sum(len(v) for v in dm.splits.values()) == len(dm.records) == 36


def test_split_without_speakers_is_stratified_and_deterministic() -> None:
    records = [Record(f"{label}{i}", label) for label in "abc" for i in range(20)]
    first = assign_splits(records, 0.2, 0.1, seed=3)
    assert first == assign_splits(records, 0.2, 0.1, seed=3)
    assert first != assign_splits(records, 0.2, 0.1, seed=4)
    for label in "abc":
        mine = [s for s, r in zip(first, records, strict=True) if r.label == label]
        assert mine.count("val") == 4 and mine.count("test") == 2


def test_manifest_split_column_is_used(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path / "c", speakers=3, per_class=1)
    lines = manifest.read_text().splitlines()
    split_of = {"spk0": "train", "spk1": "val", "spk2": "test"}
    rows = [lines[0] + ",split"] + [f"{line},{split_of[line.rsplit(',', 1)[1]]}" for line in lines[1:]]
    manifest.write_text("\n".join(rows) + "\n")
    dm = make(manifest, tmp_path)
    assert {dm.record_of(i).speaker for i in dm.splits["val"]} == {"spk1"}
    assert {dm.record_of(i).speaker for i in dm.splits["test"]} == {"spk2"}


def test_class_folders_stereo_and_other_rates_are_handled(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_corpus(root, speakers=3, per_class=2, sample_rate=8000, stereo_every=2)
    dm = AudioFolderDataModule(
        root=root,
        speaker_pattern=r"^(?P<speaker>spk\d+)_",
        cache_dir=tmp_path / "cache",
        val_fraction=0.34,
        test_fraction=0.34,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.features.sample_rate == 16000
    assert {r.speaker for r in dm.records} == {"spk0", "spk1", "spk2"}
    record = dm.record_of(0)
    assert dm.store.lengths[0] == (sf.info(record.source).frames * 2) // 160 + 1


def test_feature_settings_flow_into_shapes(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = make(tiny_corpus, tmp_path, features=FeatureSettings(n_mfcc=13, n_mels=26, deltas=2, hop_ms=20))
    features, lengths, *_ = next(iter(dm.train_dataloader()))
    assert dm.feature_dim == 39 and features.shape[2] == 39


def test_root_and_manifest_are_exclusive(tiny_corpus: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of root"):
        AudioFolderDataModule(root=tiny_corpus.parent, manifest=tiny_corpus)


def test_partial_split_column_is_an_error() -> None:
    records = [Record("a", "x", split="train"), Record("b", "x")]
    with pytest.raises(ValueError, match="1 of 2 examples have no split"):
        assign_splits(records, 0.1, 0.1, 0)
