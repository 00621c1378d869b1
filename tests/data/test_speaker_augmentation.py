"""Speaker-variability augmentation: speed perturbation, VTLN, gain and coloured noise, batched and seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchaudio

from speechrnn.data import AudioFolderDataModule
from speechrnn.data.augment import Augmenter, AugmentSettings
from speechrnn.errors import ConfigError
from speechrnn.features import FeatureSettings, MFCCFrontend, vtln_warp_frequencies, warped_mel_filterbanks
from speechrnn.fit import main as fit
from tests.data.test_on_device import assert_mixed_at_snr

RATE = 8000


def clips(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of harmonic clips with noise (zeros past each length)."""
    generator = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    t = torch.arange(max(lengths)) / RATE
    f0 = 120 + 80 * torch.rand(len(lengths), 1, generator=generator)
    audio = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 6)) * 0.2
    audio = audio + 0.01 * torch.randn(audio.shape, generator=generator)
    return audio * (torch.arange(max(lengths))[None] < lengths_t[:, None]), lengths_t


def test_speed_perturbation_equals_torchaudio_speed_per_clip_and_batched() -> None:
    augmenter = Augmenter(AugmentSettings(speed_factors=(0.9, 1.0, 1.1)), RATE, 80)
    audio, lengths = clips([4000, 3100, 2600, 3999])
    choice = torch.tensor([0, 1, 2, 2])
    out, new_lengths = augmenter.change_speed(audio, lengths, choice)
    for row, factor in enumerate((0.9, 1.0, 1.1, 1.1)):
        alone, alone_length = torchaudio.functional.speed(
            audio[row : row + 1, : lengths[row]], RATE, factor, lengths[row : row + 1]
        )
        assert int(new_lengths[row]) == int(alone_length)
        valid = int(new_lengths[row])
        torch.testing.assert_close(out[row, :valid], alone[0, :valid], atol=1e-5, rtol=0)
        assert torch.all(out[row, valid:] == 0)
    assert new_lengths.tolist()[2] < lengths.tolist()[2] and new_lengths.tolist()[0] > lengths.tolist()[0]


def test_speed_factor_one_is_the_identity_and_draws_are_seeded() -> None:
    audio, lengths = clips([3000, 2000])
    same, same_lengths = Augmenter(AugmentSettings(speed_factors=(1.0,)), RATE, 80).waveforms(audio, lengths, 200)
    assert torch.equal(same, audio) and torch.equal(same_lengths, lengths)
    settings = AugmentSettings(speed_factors=(0.9, 1.1), seed=3)
    a = Augmenter(settings, RATE, 80).waveforms(audio, lengths, 200)
    b = Augmenter(settings, RATE, 80).waveforms(audio, lengths, 200)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_vtln_at_factor_one_is_exactly_the_unwarped_front_end() -> None:
    settings = FeatureSettings(deltas=2).resolve(RATE)
    reference = torchaudio.functional.melscale_fbanks(settings.n_fft // 2 + 1, settings.f_min, RATE / 2, 40, RATE)
    torch.testing.assert_close(warped_mel_filterbanks(settings, torch.ones(1))[0], reference, atol=0, rtol=0)
    frontend = MFCCFrontend(settings)
    audio, lengths = clips([4000, 2500])
    plain = frontend(audio, lengths)
    unwarped = frontend(audio, lengths, torch.ones(2))
    assert torch.equal(plain[0], unwarped[0]) and torch.equal(plain[1], unwarped[1])


def test_warps_from_one_stft_equal_the_front_end_at_each_warp() -> None:
    frontend = MFCCFrontend(FeatureSettings(deltas=1).resolve(RATE))
    audio, lengths = clips([4000, 2500, 3300])
    warps = [None, 0.9, 1.0, 1.12]
    shared = frontend.compute_warps(audio, lengths, warps)
    assert len(shared) == len(warps)
    for warp, (features, frames) in zip(warps, shared, strict=True):
        each = None if warp is None else torch.full((3,), warp)
        alone, alone_frames = frontend(audio, lengths, each)
        assert torch.equal(frames, alone_frames)
        torch.testing.assert_close(features, alone, atol=1e-5, rtol=1e-5)
    assert (shared[1][0] - shared[0][0]).abs().max() > 0.1


def test_vtln_batched_equals_each_clip_alone_and_changes_the_features() -> None:
    frontend = MFCCFrontend(FeatureSettings().resolve(RATE))
    audio, lengths = clips([4000, 2500, 3300])
    warps = torch.tensor([0.9, 1.07, 1.0])
    batched, frames = frontend(audio, lengths, warps)
    for row in range(3):
        alone, _ = frontend(audio[row : row + 1, : lengths[row]], lengths[row : row + 1], warps[row : row + 1])
        torch.testing.assert_close(batched[row, : frames[row]], alone[0], atol=1e-4, rtol=1e-4)
    plain, _ = frontend(audio, lengths)
    assert (batched[0] - plain[0]).abs().max() > 0.1 and torch.equal(batched[2], plain[2])


def test_vtln_warp_is_monotonic_within_the_band() -> None:
    frequencies = torch.linspace(0, RATE / 2, 129)
    warped = vtln_warp_frequencies(frequencies, torch.tensor([0.9, 1.0, 1.1]), RATE / 2)
    assert torch.all(warped.diff(dim=1) > 0)
    assert torch.allclose(warped[:, -1], torch.tensor(RATE / 2)) and torch.all(warped[:, 0] == 0)
    assert torch.equal(warped[1], frequencies)
    assert warped[2, 40] == pytest.approx(1.1 * frequencies[40]) and warped[0, 40] == pytest.approx(
        0.9 * frequencies[40]
    )


def test_coloured_noise_is_mixed_at_the_requested_snr_and_seeded() -> None:
    settings = AugmentSettings(coloured_noise=True, noise_snr_db=(12.0, 12.0), noise_probability=1.0, seed=1)
    audio, lengths = clips([4000, 3000, 1000])
    noisy, _ = Augmenter(settings, RATE, 80).waveforms(audio, lengths, 200)
    again, _ = Augmenter(settings, RATE, 80).waveforms(audio, lengths, 200)
    assert torch.equal(noisy, again)
    assert_mixed_at_snr(audio, noisy, lengths, 12.0)


def test_gain_scales_each_clip_within_the_range_seeded_and_only_shifts_c0() -> None:
    settings = AugmentSettings(gain_db=6.0, seed=2)
    audio, lengths = clips([4000, 3000, 1000, 2500])
    louder, same_lengths = Augmenter(settings, RATE, 80).waveforms(audio, lengths, 200)
    again, _ = Augmenter(settings, RATE, 80).waveforms(audio, lengths, 200)
    assert torch.equal(louder, again) and torch.equal(same_lengths, lengths)
    ratio = louder.abs().amax(1) / audio.abs().amax(1)
    decibels = 20 * torch.log10(ratio)
    assert torch.all(decibels.abs() <= 6.0) and decibels.std() > 0.5
    assert torch.allclose(louder, audio * ratio[:, None], rtol=1e-5, atol=1e-7)
    frontend = MFCCFrontend(FeatureSettings(sample_rate=RATE, n_mfcc=13, n_mels=30, normalize="none"))
    before, frames = frontend(audio, lengths)
    after, _ = frontend(louder, lengths)
    valid = (torch.arange(before.shape[1])[None] < frames[:, None])[..., None]
    offset = (after - before)[..., 0]  # c0 moves by the gain in dB times sqrt(n_mels) (orthonormal DCT)
    torch.testing.assert_close(offset * valid[..., 0], (decibels[:, None] * 30**0.5).expand_as(offset) * valid[..., 0])
    torch.testing.assert_close(after[..., 1:], before[..., 1:], rtol=1e-4, atol=2e-3)
    with pytest.raises(ValueError, match="gain_db must be >= 0"):
        AugmentSettings(gain_db=-1)


def test_waveform_augmentation_needs_the_waveform_cache(tiny_corpus: Path) -> None:
    for augment in (
        AugmentSettings(speed_factors=(0.9, 1.1)),
        AugmentSettings(vtln_warp=0.1),
        AugmentSettings(gain_db=3),
    ):
        with pytest.raises(ConfigError, match="need on_device_features=True"):
            AudioFolderDataModule(manifest=tiny_corpus, augment=augment, on_device_features=False)
        assert AudioFolderDataModule(manifest=tiny_corpus, augment=augment).on_device_features  # left unset: follows
    with pytest.raises(ValueError, match="vtln_warp must be in"):
        AugmentSettings(vtln_warp=0.7)


def test_featurize_applies_speed_and_vtln_to_training_batches_only(tiny_corpus: Path, tmp_path: Path) -> None:
    augment = AugmentSettings(speed_factors=(0.9, 1.1), vtln_warp=0.1, coloured_noise=True)
    dm = AudioFolderDataModule(
        manifest=tiny_corpus, cache_dir=tmp_path / "c", on_device_features=True, augment=augment, batch_size=4
    )
    dm.setup("fit")
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    plain = dm.featurize(batch, training=False)
    augmented = dm.featurize(batch, training=True)
    assert plain[0].shape[0] == augmented[0].shape[0] == 4
    assert not torch.equal(plain[1], augmented[1])  # speed changed the lengths
    assert torch.equal(plain[1], dm.featurize(batch, training=False)[1])


def test_fit_trains_with_speaker_augmentation(tiny_corpus: Path, tmp_path: Path) -> None:
    fit(
        [
            "--data", "AudioFolderDataModule", "--data.manifest", str(tiny_corpus),
            "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "8", "--model.hidden_size", "8",
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1",
            "--data.on_device_features", "true", "--data.augment.speed_factors", "[0.9, 1.0, 1.1]",
            "--data.augment.vtln_warp", "0.1", "--data.augment.coloured_noise", "true",
        ]
    )  # fmt: skip
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "test_metrics.json").is_file()
