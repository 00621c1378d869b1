"""A user's unlabelled recordings beside a run's corpus: found by suffix below folders, one voice per
argument, stored after the corpus as the test split, featurised and normalised exactly as the
corpus's clips (per utterance, with the training split's statistics, or with their own voice's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.audio_io import AudioError, audio_files
from speechrnn.data import AudioFolderDataModule
from speechrnn.data.audio_base import extract_features_batch
from speechrnn.data.augment import AugmentSettings
from speechrnn.data.corpora.unlabelled import (
    UNLABELLED,
    ChainedFeatureStore,
    RecordingsDataModule,
    voices_of_arguments,
)
from speechrnn.data.storage.feature_cache import ConcatenatedFeatureStore
from speechrnn.errors import UserInputError
from speechrnn.features import FeatureSettings
from speechrnn.normalization import FrameMoments, standardize
from tests.conftest import CLASSES, chirp, write_corpus


def write_voice(folder: Path, clips: int, pitch: float, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for n in range(clips):
        kind = CLASSES[n % len(CLASSES)]
        path = folder / ("deeper" if n % 2 else "") / f"{kind}_{n}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, chirp(kind, rng.uniform(0.2, 0.4), 16000, rng), round(16000 * pitch))
        paths.append(path)
    return sorted(paths)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """``(manifest of 4 speakers, cache folder, 5 recordings of a new voice)``."""
    root = tmp_path_factory.mktemp("unlabelled")
    return write_corpus(root / "corpus", speakers=4, per_class=2), root / "cache", write_voice(root / "her", 5, 1.2, 3)


def base_data(corpus, normalize: str, on_device: bool) -> AudioFolderDataModule:
    manifest, cache, _ = corpus
    return AudioFolderDataModule(
        manifest=manifest, cache_dir=cache, features=FeatureSettings(deltas=1, normalize=normalize), batch_size=4,
        on_device_features=on_device, augment=AugmentSettings(), val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip


def test_audio_files_are_found_below_folders_by_suffix(tmp_path: Path) -> None:
    for name in ("a.wav", "sub/b.flac", "sub/deeper/c.WAV", "notes.txt", "d.mp3"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    assert audio_files(tmp_path / "in") == [tmp_path / "in" / n for n in ("a.wav", "sub/b.flac", "sub/deeper/c.WAV")]
    assert audio_files(tmp_path / "in" / "notes.txt") == [tmp_path / "in" / "notes.txt"]  # read later, named then
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match=r"empty: no audio files \(.wav, .flac"):
        audio_files(tmp_path / "empty")


def test_each_argument_is_one_voice_and_each_file_is_given_once(corpus, tmp_path: Path) -> None:
    one = next(p for p in corpus[2] if p.parent.name == "her")
    her = one.parent
    assert voices_of_arguments([her]) == {str(her): corpus[2]}
    with pytest.raises(UserInputError, match=f"{one}: reached from both {her} and {one}"):
        voices_of_arguments([her, one])
    with pytest.raises(UserInputError, match=f"{her}: given more than once"):
        voices_of_arguments([her, her])


def test_a_chained_store_continues_the_indices() -> None:
    first = ConcatenatedFeatureStore.from_arrays([np.zeros((2, 3), np.float32), np.ones((4, 3), np.float32)])
    second = ConcatenatedFeatureStore.from_arrays([np.full((5, 3), 7, np.float32)])
    store = ChainedFeatureStore(first, second)
    assert store.lengths.tolist() == [2, 4, 5] and len(store) == 3 and store.feature_dim == 3
    assert store[1].sum() == 12 and store[2].shape == (5, 3) and store[2].max() == 7
    with pytest.raises(IndexError):
        store[3]
    with pytest.raises(ValueError, match="feature sizes differ: 3 and 2"):
        ChainedFeatureStore(first, ConcatenatedFeatureStore.from_arrays([np.zeros((1, 2), np.float32)]))


def features_by_index(dm, split: str) -> dict[int, np.ndarray]:
    """Each stored sequence of ``split`` as the model sees it (batched, featurised, normalised)."""
    found = {}
    for batch in dm.dataloader(split, shuffle=False):
        features, lengths, _, indices = dm.featurize(batch)
        for row, index in enumerate(indices.tolist()):
            found[index] = features[row, : lengths[row]].numpy()
    return found


@pytest.mark.parametrize("on_device", [False, True], ids=["cached-features", "waveforms"])
@pytest.mark.parametrize("normalize", ["speaker", "dataset", "utterance"])
def test_recordings_are_featurised_and_normalised_as_training_was(corpus, normalize: str, on_device: bool) -> None:
    base = base_data(corpus, normalize, on_device)
    dm = RecordingsDataModule(base, {"her": corpus[2]})
    dm.setup("fit")
    count = len(base.store)
    assert dm.splits["train"].tolist() == base.splits["train"].tolist()
    assert dm.splits["val"].tolist() == base.splits["val"].tolist()
    assert dm.splits["test"].tolist() == list(range(count, count + 5)) == dm.voice_indices()["her"].tolist()
    assert (dm.targets()[count:] == UNLABELLED).all() and (dm.targets()[:count] == base.targets()).all()
    assert [dm.record_of(i).source for i in dm.splits["test"]] == [str(p.resolve()) for p in corpus[2]]
    assert {dm.record_of(i).speaker for i in dm.splits["test"]} == {"her"} and dm.class_names == base.class_names

    settings = base.feature_settings
    raw = extract_features_batch([str(p) for p in corpus[2]], settings)
    if normalize == "speaker":
        moments = FrameMoments(1, settings.feature_dim)
        for array in raw:
            moments.add(torch.from_numpy(array.astype(np.float64))[None], torch.tensor([len(array)]), torch.tensor([0]))
        mean, std = moments.result()
        mean, std = mean[0], std[0]
        assert np.allclose(dm.speaker_statistics["her"][0], mean)
        assert np.allclose(dm.speaker_statistics["spk0"][0], base.speaker_statistics["spk0"][0])
    elif normalize == "dataset":
        mean, std = base.feature_mean, base.feature_std
    seen = features_by_index(dm, "test")
    for index, array in zip(dm.splits["test"].tolist(), raw, strict=True):
        expected = torch.from_numpy(array)[None]
        if normalize in ("speaker", "dataset"):
            expected = standardize(expected, torch.tensor([len(array)]), torch.as_tensor(mean), torch.as_tensor(std))
        assert np.allclose(seen[index], expected[0].numpy(), atol=1e-4), index

    dm.pseudo_label(dm.splits["test"], np.zeros(5, np.int64))  # training batches mix corpus clips and recordings
    mixed = features_by_index(dm, "train")
    assert sorted(mixed) == sorted([*base.splits["train"].tolist(), *dm.splits["test"].tolist()])
    corpus_clips = features_by_index(base, "train")
    for index, array in corpus_clips.items():
        assert np.allclose(mixed[index], array, atol=1e-4), index
    for index in dm.splits["test"].tolist():
        assert np.allclose(mixed[index], seen[index], atol=1e-4), index
    targets = {
        int(i): int(t) for _, _, ts, ids in dm.dataloader("train", shuffle=False) for i, t in zip(ids, ts, strict=True)
    }
    assert all(targets[i] == 0 for i in dm.splits["test"].tolist())


def test_a_voice_named_like_a_corpus_speaker_keeps_its_own_statistics(corpus, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_voice(tmp_path / "spk0", 4, 0.8, 9)
    base = base_data(corpus, "speaker", False)
    dm = RecordingsDataModule(base, voices_of_arguments([Path("spk0")]))
    dm.setup("fit")
    assert dm.voice_names == {"spk0": "spk0 (new recordings)"}
    assert {dm.record_of(i).speaker for i in dm.splits["test"]} == {"spk0 (new recordings)"}
    assert np.array_equal(dm.speaker_statistics["spk0"][0], base.speaker_statistics["spk0"][0])
    assert not np.allclose(dm.speaker_statistics["spk0 (new recordings)"][0], base.speaker_statistics["spk0"][0])


def test_a_bad_recording_is_named(corpus, tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVE")
    dm = RecordingsDataModule(base_data(corpus, "speaker", False), {"her": [*corpus[2], broken]})
    with pytest.raises(AudioError, match=f"{broken}: cannot read audio"):
        dm.setup("fit")
