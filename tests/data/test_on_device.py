"""On-device features equal the cached features; augmentation is seeded, training-only and correct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.data import AudioFolderDataModule
from speechrnn.data.augment import Augmenter, AugmentSettings, shift_sequences
from speechrnn.features import FeatureSettings


def assert_mixed_at_snr(clean: torch.Tensor, noisy: torch.Tensor, lengths: torch.Tensor, snr_db: float) -> None:
    """Each clip of ``noisy`` is its ``clean`` clip plus noise at ``snr_db``, and stays zero past its length."""
    for row, length in enumerate(lengths.tolist()):
        signal = clean[row, :length].square().mean()
        noise = (noisy[row, :length] - clean[row, :length]).square().mean()
        assert 10 * torch.log10(signal / noise) == pytest.approx(snr_db, abs=0.01)
        assert torch.all(noisy[row, length:] == 0)


@pytest.mark.parametrize("settings", [FeatureSettings(), FeatureSettings(deltas=2, normalize="dataset")])
def test_on_device_features_equal_the_cached_features(tiny_corpus: Path, tmp_path: Path, settings) -> None:
    cached = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "c", features=settings, batch_size=5)
    device = AudioFolderDataModule(
        manifest=tiny_corpus, cache_dir=tmp_path / "c", features=settings, batch_size=5, on_device_features=True
    )
    cached.setup("fit")
    device.setup("fit")
    if settings.normalize == "dataset":
        np.testing.assert_allclose(device.feature_mean, cached.feature_mean, rtol=1e-4, atol=1e-4)
    for a, b in zip(cached.dataloader("val", shuffle=False), device.dataloader("val", shuffle=False), strict=True):
        waveforms, sample_lengths = b[0], b[1]
        assert waveforms.shape[2] == 1 and int(sample_lengths.max()) == waveforms.shape[1]
        features, lengths, labels, indices = device.featurize(b)
        torch.testing.assert_close(lengths, a[1])
        torch.testing.assert_close(features, a[0], rtol=1e-4, atol=2e-4)
        assert torch.equal(labels, a[2]) and torch.equal(indices, a[3])


def test_shift_sequences_moves_content_and_lengths() -> None:
    x = torch.arange(1.0, 9.0).view(2, 4, 1)
    shifted, lengths = shift_sequences(x, torch.tensor([4, 3]), torch.tensor([2, -1]))
    assert lengths.tolist() == [6, 2]
    assert shifted[0, :, 0].tolist() == [0, 0, 1, 2, 3, 4]
    assert shifted[1, :2, 0].tolist() == [6, 7] and torch.all(shifted[1, 2:] == 0)


def test_noise_is_mixed_at_the_requested_snr(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "hum.wav", (0.1 * rng.standard_normal(20000)).astype(np.float32), 16000)
    settings = AugmentSettings(noise_dir=str(tmp_path / "noise"), noise_snr_db=(10.0, 10.0), noise_probability=1.0)
    augmenter = Augmenter(settings, 16000, 160)
    clean = torch.sin(torch.linspace(0, 600, 8000)).repeat(3, 1) * 0.3
    lengths = torch.tensor([8000, 6000, 4000])
    clean = clean * (torch.arange(8000)[None] < lengths[:, None])
    noisy, new_lengths = augmenter.waveforms(clean, lengths, 400)
    assert torch.equal(new_lengths, lengths)
    assert_mixed_at_snr(clean, noisy, lengths, 10.0)


def test_augmentation_is_seeded_and_training_only(tiny_corpus: Path, tmp_path: Path) -> None:
    augment = AugmentSettings(time_shift_ms=50, freq_masks=2, time_masks=2, seed=3)
    dm = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "c", augment=augment, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    untouched = dm.featurize(batch, training=False)
    assert all(torch.equal(a, b) for a, b in zip(untouched, batch, strict=True))
    torch.manual_seed(0)
    first = dm.featurize(batch, training=True)
    again = AudioFolderDataModule(manifest=tiny_corpus, cache_dir=tmp_path / "c", augment=augment, batch_size=4)
    again.setup("fit")
    torch.manual_seed(0)
    second = again.featurize(next(iter(again.dataloader("train", shuffle=False))), training=True)
    torch.testing.assert_close(first[0], second[0])
    assert torch.equal(first[1], second[1]) and not torch.equal(first[1], batch[1])
    for row, length in enumerate(first[1].tolist()):
        assert torch.all(first[0][row, length:] == 0)


def test_noise_needs_waveforms_and_settings_are_checked(tiny_corpus: Path) -> None:
    with pytest.raises(ValueError, match="on_device_features"):
        AudioFolderDataModule(manifest=tiny_corpus, augment=AugmentSettings(noise_dir="x"), on_device_features=False)
    assert AudioFolderDataModule(manifest=tiny_corpus, augment=AugmentSettings(noise_dir="x")).on_device_features
    with pytest.raises(ValueError, match="augment.noise_snr_db"):
        AugmentSettings(noise_snr_db=(20.0, 5.0))


def test_fit_with_on_device_features_and_augmentation(tiny_corpus: Path, tmp_path: Path) -> None:
    from speechrnn.fit import main
    from tests.test_cli import fit_args, report_accuracy

    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "n.wav", (0.05 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32), 16000)
    metrics = main(fit_args(
        tiny_corpus, tmp_path, "--trainer.max_epochs", "1", "--data.on_device_features", "true",
        "--data.augment.time_shift_ms", "30", "--data.augment.noise_dir", str(noise),
        "--data.augment.freq_masks", "1", "--data.augment.time_masks", "1",
    ))  # fmt: skip
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert metrics["test/acc"] == pytest.approx(report_accuracy(run), abs=1e-6)
