"""Per-speaker normalisation: statistics over all of a speaker's clips, the same on the cached and
on-device paths, in the checkpoint, and at inference from a new speaker's own recordings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from speechrnn.data import AudioFolderDataModule
from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings

SPEAKER = FeatureSettings(deltas=1, normalize="speaker")
RAW = FeatureSettings(deltas=1, normalize="none")


def module(manifest: Path, cache: Path, settings: FeatureSettings, **kwargs) -> AudioFolderDataModule:
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=cache, features=settings, batch_size=4, **kwargs)
    dm.setup("fit")
    return dm


def expected_statistics(raw: AudioFolderDataModule) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    frames: dict[str, list[np.ndarray]] = {}
    for index in range(len(raw.store_records)):
        frames.setdefault(raw.record_of(index).speaker, []).append(np.asarray(raw.store[index], np.float64))
    return {s: (np.concatenate(f).mean(0), np.concatenate(f).std(0) + 1e-5) for s, f in frames.items()}


def test_every_split_is_normalised_with_its_speakers_statistics(tiny_corpus: Path, tmp_path: Path) -> None:
    raw = module(tiny_corpus, tmp_path / "c", RAW)
    dm = module(tiny_corpus, tmp_path / "c", SPEAKER)
    expected = expected_statistics(raw)
    assert sorted(dm.speaker_statistics) == sorted(expected) == [f"spk{i}" for i in range(6)]
    held_out = {dm.record_of(int(i)).speaker for i in dm.splits["test"]}
    assert held_out and not held_out & {dm.record_of(int(i)).speaker for i in dm.splits["train"]}
    for speaker, (mean, std) in expected.items():
        np.testing.assert_allclose(dm.speaker_statistics[speaker][0], mean, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dm.speaker_statistics[speaker][1], std, rtol=1e-5, atol=1e-4)
    for split in ("train", "test"):
        for features, lengths, _, indices in dm.dataloader(split, shuffle=False):
            for row, (index, length) in enumerate(zip(indices.tolist(), lengths.tolist(), strict=True)):
                mean, std = expected[dm.record_of(index).speaker]
                want = (np.asarray(raw.store[index]) - mean) / std
                np.testing.assert_allclose(features[row, :length].numpy(), want, rtol=1e-4, atol=1e-4)
                assert torch.all(features[row, length:] == 0)
    stored = dm.data_config["speaker_statistics"]
    assert sorted(stored) == sorted(expected)
    np.testing.assert_allclose(stored["spk0"]["mean"], expected["spk0"][0], rtol=1e-5, atol=1e-4)
    assert raw.data_config["speaker_statistics"] is None


def test_statistics_measured_over_several_passes_equal_the_reference(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import speechrnn.data.base as base

    raw = module(tiny_corpus, tmp_path / "c", RAW)
    expected = expected_statistics(raw)
    names = sorted(expected)
    groups = np.array([names.index(raw.record_of(i).speaker) for i in range(len(raw.store_records))])
    indices = np.arange(len(groups))
    whole = raw.group_statistics(indices, groups)
    monkeypatch.setattr(base, "STATISTICS_CHUNK", 3)  # passes that split a speaker's clips
    parts = raw.group_statistics(indices, groups)
    for mean, std in (whole, parts):
        np.testing.assert_allclose(mean, np.stack([expected[n][0] for n in names]), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(std, np.stack([expected[n][1] for n in names]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6, atol=1e-6)
    empty = raw.group_statistics(indices[:0], groups[:0])
    assert empty[0].shape == (1, raw.feature_dim) and not np.any(empty[0])


def test_on_device_speaker_normalisation_equals_the_cached_path(tiny_corpus: Path, tmp_path: Path) -> None:
    cached = module(tiny_corpus, tmp_path / "c", SPEAKER)
    device = module(tiny_corpus, tmp_path / "c", SPEAKER, on_device_features=True)
    for speaker, (mean, std) in cached.speaker_statistics.items():
        np.testing.assert_allclose(device.speaker_statistics[speaker][0], mean, rtol=1e-4, atol=2e-4)
        np.testing.assert_allclose(device.speaker_statistics[speaker][1], std, rtol=1e-4, atol=2e-4)
    for a, b in zip(cached.dataloader("test", shuffle=False), device.dataloader("test", shuffle=False), strict=True):
        features, lengths, _, indices = device.featurize(b)
        assert torch.equal(indices, a[3]) and torch.equal(lengths, a[1])
        torch.testing.assert_close(features, a[0], rtol=1e-4, atol=5e-4)


def test_speaker_normalisation_needs_every_speaker_before_any_audio_is_read(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "speaker"], ["a.wav", "x", "s1"], ["b.wav", "y", ""]])
    dm = AudioFolderDataModule(manifest=manifest, cache_dir=tmp_path / "cache", features=SPEAKER)
    with pytest.raises(UserInputError, match=r"normalize='speaker' needs every example's speaker; 1 have none.*b\.wav"):
        dm.prepare_data()
    assert not (tmp_path / "cache").exists()


def test_feature_settings_name_the_speaker_option() -> None:
    with pytest.raises(ValueError, match="utterance, speaker, dataset or none"):
        FeatureSettings(normalize="global")


@pytest.fixture(scope="module")
def speaker_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from tests.conftest import fit_speaker_model

    return fit_speaker_model(tmp_path_factory.mktemp("speaker"))


def test_inference_with_a_new_speakers_recordings_equals_evaluation(speaker_checkpoint) -> None:
    from speechrnn.inference import Predictor
    from speechrnn.models.classifier import RNNClassifier
    from speechrnn.split_predictions import predict_split

    checkpoint, manifest, cache = speaker_checkpoint
    model = RNNClassifier.from_checkpoint(checkpoint)
    dm = module(manifest, cache, SPEAKER)
    _, probabilities, sources, speakers, _ = predict_split(model, dm, "test")
    predictor = Predictor(model)
    assert predictor.normalization == dm.normalization == "speaker"
    with pytest.raises(ValueError, match="normalises features per speaker"):
        predictor.predict_file(sources[0])
    for speaker in sorted(set(speakers)):
        files = [dm.record_of(i).source for i in range(len(dm.store_records)) if dm.record_of(i).speaker == speaker]
        statistics, used = predictor.speaker_statistics(files)
        assert used == len(files)
        stored = predictor.known_speaker(speaker)
        torch.testing.assert_close(statistics[0], stored[0], rtol=1e-4, atol=2e-4)
        for source, row in zip(sources, probabilities, strict=True):
            if source in files:
                with torch.inference_mode():
                    got = predictor.classifier(*_one(predictor, source), *statistics)[0]
                np.testing.assert_allclose(got.numpy(), row, rtol=1e-3, atol=1e-4)
    with pytest.raises(KeyError, match="known speakers: spk0"):
        predictor.known_speaker("nobody")


def _one(predictor, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    from speechrnn.audio_io import read_audio

    audio = read_audio(source, predictor.settings.rate, min_samples=predictor.settings.win_length)
    return audio.unsqueeze(0), torch.tensor([audio.numel()])


def test_predict_takes_each_input_as_one_speaker(speaker_checkpoint, tmp_path: Path, capsys) -> None:
    from speechrnn.predict import main as predict

    checkpoint, manifest, _ = speaker_checkpoint
    folder = manifest.parent / "up"
    assert predict(["--ckpt", str(checkpoint), str(folder), "--top_k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list(folder.glob("*.wav"))) and all(line.split("\t")[1].split()[0] for line in lines)
    one = sorted(folder.glob("*.wav"))[0]
    assert predict(["--ckpt", str(checkpoint), str(one), "--speaker", "spk1"]) == 0
    assert "speaker statistics from one recording" not in capsys.readouterr().err
    assert predict(["--ckpt", str(checkpoint), str(one)]) == 0
    assert "speaker statistics from one recording" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no statistics for speaker 'nobody'.*known speakers: spk0"):
        predict(["--ckpt", str(checkpoint), str(one), "--speaker", "nobody"])


def _enrolled(predictor, files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from speechrnn.audio_io import read_audio

    clips = [read_audio(f, predictor.settings.rate, min_samples=predictor.settings.win_length) for f in files]
    return torch.nn.utils.rnn.pad_sequence(clips, batch_first=True), torch.tensor([len(c) for c in clips])


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_a_per_speaker_model_exports_with_the_speakers_enrollment_as_input(
    speaker_checkpoint, tmp_path: Path, fmt: str
) -> None:
    from speechrnn.export import export, load_torchscript
    from speechrnn.inference import Predictor

    checkpoint, manifest, _ = speaker_checkpoint
    predictor = Predictor.from_checkpoint(checkpoint)
    files = sorted(str(p) for p in manifest.parent.rglob("spk5_*.wav"))
    statistics, _ = predictor.speaker_statistics(files)
    expected = torch.stack(
        [predictor.probabilities(_one(predictor, f)[0][0].numpy(), 16000, statistics) for f in files]
    )
    clips, lengths = _enrolled(predictor, files)
    enrollment, enrollment_lengths = _enrolled(predictor, files[::-1])
    if fmt == "torchscript":
        module, metadata = load_torchscript(export(checkpoint, tmp_path / "model.pt", format="torchscript"))
        with torch.no_grad():
            got = module(clips, lengths, enrollment, enrollment_lengths)
    else:
        onnxruntime = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
        from speechrnn.export import read_onnx_metadata

        path = export(checkpoint, tmp_path / "model.onnx", format="onnx")
        metadata = read_onnx_metadata(path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["waveforms", "lengths", "enrollment", "enrollment_lengths"]
        feed = {
            "waveforms": clips,
            "lengths": lengths,
            "enrollment": enrollment,
            "enrollment_lengths": enrollment_lengths,
        }
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feed.items()})[0])
    assert metadata["input"] == "waveform+enrollment" and metadata["features"]["normalize"] == "speaker"
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_shards_of_a_per_speaker_corpus_give_the_same_normalised_batches(tiny_corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("litdata")
    from speechrnn.data.corpora.from_shards import ShardedDataModule
    from speechrnn.data.storage.shards import write_shards

    write_shards(
        AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "c", features=SPEAKER), tmp_path / "s"
    )
    source = module(tiny_corpus, tmp_path / "c", SPEAKER)
    shards = ShardedDataModule(str(tmp_path / "s"), batch_size=4)
    shards.setup("fit")
    assert shards.data_config["speaker_statistics"] == source.data_config["speaker_statistics"]
    order = np.concatenate([source.splits[split] for split in ("train", "val", "test")])
    for a in shards.dataloader("test", shuffle=False, shard=False):
        features, lengths, _, indices = a
        for row, (index, length) in enumerate(zip(indices.tolist(), lengths.tolist(), strict=True)):
            original = int(order[index])
            mean, std = source.speaker_statistics[source.record_of(original).speaker]
            want = (np.asarray(source.store[original]) - mean) / std
            np.testing.assert_allclose(features[row, :length].numpy(), want, rtol=1e-5, atol=1e-5)


def test_augmented_statistics_interpolate_warps_and_pick_speeds() -> None:
    from speechrnn.data.augment import AugmentedStatistics

    speed_shift = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # (G=2, K=2, F=1)
    warp_shift = torch.tensor([[[0.0], [10.0], [20.0]], [[0.0], [-10.0], [-20.0]]])  # (G, W=3, F)
    table = AugmentedStatistics(speed_shift, 2 * torch.ones_like(speed_shift), torch.tensor([0.9, 1.0, 1.1]),
                                warp_shift, torch.ones_like(warp_shift))  # fmt: skip
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    groups, speeds, warps = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1]), torch.tensor([1.05, 0.9, 1.2])
    shifted, scaled = table.adjust(mean, std, groups, speeds, warps)
    torch.testing.assert_close(shifted.flatten(), torch.tensor([2.0 + 15.0, 3.0 + 0.0, 4.0 - 20.0]))
    torch.testing.assert_close(scaled.flatten(), torch.full((3,), 2.0))
    unchanged = table.adjust(mean, std, groups, None, None)
    assert torch.equal(unchanged[0], mean) and torch.equal(unchanged[1], std)


@pytest.mark.parametrize("augmented", [True, False])
def test_speed_perturbed_clips_are_normalised_with_statistics_at_their_speed(
    tiny_corpus: Path, tmp_path: Path, augmented: bool
) -> None:
    from speechrnn.data.augment import AugmentSettings

    augment = AugmentSettings(speed_factors=(0.8,), augmented_statistics=augmented)
    dm = module(tiny_corpus, tmp_path / "c", SPEAKER, on_device_features=True, augment=augment)
    sums: dict[str, list[torch.Tensor]] = {}
    for batch in dm.dataloader("train", shuffle=False):
        features, lengths, _, indices = dm.featurize(batch, training=True)
        for row, (index, length) in enumerate(zip(indices.tolist(), lengths.tolist(), strict=True)):
            sums.setdefault(dm.record_of(index).speaker, []).append(features[row, :length])
    means = torch.stack([torch.cat(frames).mean(0) for frames in sums.values()])
    if augmented:  # every training clip of a speaker is in the measured sample: exactly centred
        torch.testing.assert_close(means, torch.zeros_like(means), rtol=0, atol=2e-3)
    else:
        assert means.abs().max() > 0.3
