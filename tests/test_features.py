"""The torchaudio front end used in training agrees with the librosa reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrnn.audio_io import read_audio
from speechrnn.features import FeatureSettings, MFCCFrontend, librosa_mfcc
from speechrnn.normalization import normalize_utterances
from tests.conftest import REAL_DATA, chirp

FSDD_CLIP = REAL_DATA / "fsdd" / "recordings" / "3_theo_7.wav"
# Per block of coefficients (cepstra, deltas, delta-deltas), as a fraction of the block's largest
# reference value: 1.4e-6 (raw) and 1.3e-5 (normalised per utterance) measured on the FSDD clip.
BLOCK_TOLERANCE = 1e-4


def speech_clip() -> tuple[np.ndarray, int]:
    """A real FSDD recording when one is present, else a synthesised harmonic sweep."""
    if FSDD_CLIP.is_file():
        wave, rate = sf.read(FSDD_CLIP, dtype="float32")
        return wave, rate
    return chirp("down", 0.5, 8000, np.random.default_rng(0)), 8000


@pytest.mark.parametrize("deltas", [0, 1, 2])
@pytest.mark.parametrize("normalize", ["none", "utterance"])
def test_torchaudio_matches_librosa_on_speech(deltas: int, normalize: str) -> None:
    wave, rate = speech_clip()
    settings = FeatureSettings(sample_rate=rate, f_max=rate / 2, deltas=deltas, normalize=normalize)
    ours, lengths = MFCCFrontend(settings)(torch.from_numpy(wave)[None])
    reference = librosa_mfcc(wave, settings)
    assert ours.shape[1:] == reference.shape and int(lengths[0]) == len(reference)
    n = settings.n_mfcc
    for block in range(deltas + 1):
        columns = slice(block * n, (block + 1) * n)
        scale = np.abs(reference[:, columns]).max()
        np.testing.assert_allclose(ours[0, :, columns].numpy(), reference[:, columns], atol=BLOCK_TOLERANCE * scale)


def test_settings_derive_frame_geometry() -> None:
    settings = FeatureSettings(sample_rate=16000, win_ms=25, hop_ms=10, n_mfcc=13, deltas=2)
    assert (settings.win_length, settings.hop_length, settings.n_fft) == (400, 160, 512)
    assert settings.feature_dim == 39 and settings.num_frames(16000) == 101
    assert FeatureSettings().resolve(8000).sample_rate == 8000
    assert FeatureSettings(sample_rate=22050).resolve(8000).sample_rate == 22050


@pytest.mark.parametrize(
    "kwargs,option",
    [({"n_mfcc": 50, "n_mels": 40}, "n_mfcc"), ({"hop_ms": 30, "win_ms": 25}, "win_ms"), ({"deltas": 3}, "deltas"),
     ({"sample_rate": 8000, "f_max": 6000}, "f_max"), ({"normalize": "global"}, "normalize")],
)  # fmt: skip
def test_invalid_settings_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=f"features.{option}"):
        FeatureSettings(**kwargs)


def test_batched_utterance_normalisation_ignores_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=generator) * 5 + 2
    lengths = torch.tensor([6, 4])
    batched = normalize_utterances(x, lengths)
    alone = normalize_utterances(x[1:, :4], lengths[1:])
    torch.testing.assert_close(batched[1, :4], alone[0])
    assert torch.all(batched[1, 4:] == 0)


def test_resampled_file_gives_the_frames_of_the_target_rate(tmp_path: Path) -> None:
    wave = chirp("up", 0.5, 44100, np.random.default_rng(1))
    sf.write(tmp_path / "a.flac", np.stack([wave, wave], 1), 44100)
    audio = read_audio(tmp_path / "a.flac", 16000)
    assert audio.dtype == torch.float32 and audio.shape == (8000,)


@pytest.mark.parametrize("deltas", [0, 2])
@pytest.mark.parametrize("normalize", ["utterance", "none"])
def test_padded_batch_gives_each_clip_its_own_features(deltas: int, normalize: str) -> None:
    frontend = MFCCFrontend(FeatureSettings(sample_rate=16000, deltas=deltas, normalize=normalize))
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 5000, 777, 12345])
    waves = torch.randn(4, 16000, generator=generator) * torch.linspace(0.1, 1, 16000)
    waves = waves * (torch.arange(16000)[None] < lengths[:, None])
    batched, frame_lengths = frontend(waves, lengths)
    for row, length in enumerate(lengths.tolist()):
        alone, alone_length = frontend(waves[row : row + 1, :length])
        assert int(alone_length[0]) == int(frame_lengths[row])
        torch.testing.assert_close(batched[row, : int(frame_lengths[row])], alone[0], rtol=1e-4, atol=5e-5)
        assert torch.all(batched[row, int(frame_lengths[row]) :] == 0)
