"""Reading audio: soundfile I/O, down-mix to mono, resampling, and checks that name the bad file."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

TRUNCATED = re.compile(r"data\s*:\s*(?P<declared>\d+)\s*\(should be (?P<held>\d+)\)")
"""libsndfile's own diagnosis of a WAV data chunk cut short (it would otherwise read what is there)."""

SILENCE_PEAK = 1e-4
"""Clips whose absolute peak stays below this (about -80 dBFS) are rejected as silent."""


class AudioError(ValueError):
    """A file that cannot be used as training or inference audio; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(frames, channels)`` array."""
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Band-limited resampling with torchaudio (kernels cached per rate pair)."""
    if orig_freq == new_freq:
        return waveform
    return _resampler(int(orig_freq), int(new_freq))(waveform)


def read_audio(path: str | os.PathLike, sample_rate: int, min_samples: int = 1) -> torch.Tensor:
    """Load ``path`` as a float32 mono waveform ``(samples,)`` at ``sample_rate``.

    Any rate and channel count is accepted. Raises :class:`AudioError` naming the file when it is
    missing, unreadable, empty, contains NaN/inf, is silent, or is shorter than ``min_samples``
    after resampling.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        with sf.SoundFile(path) as handle:  # one open for the header check and the samples
            extra_info, file_rate = handle.extra_info, handle.samplerate
            samples = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(path, f"cannot read audio (unknown format or corrupt file): {error}") from None
    truncated = TRUNCATED.search(extra_info)
    if truncated:
        raise AudioError(
            path,
            f"truncated file: its header declares {truncated['declared']} bytes of audio, it holds {truncated['held']}",
        )
    if samples.size == 0:
        raise AudioError(path, "empty file (no samples)")
    if not np.isfinite(samples).all():
        raise AudioError(path, "contains NaN or infinite samples")
    mono = to_mono(samples)
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK:
        raise AudioError(path, f"silent (peak amplitude {peak:.1e})")
    waveform = resample(torch.from_numpy(np.ascontiguousarray(mono)), file_rate, sample_rate)
    if waveform.numel() < min_samples:
        raise AudioError(
            path, f"too short ({waveform.numel()} samples at {sample_rate} Hz, need at least {min_samples})"
        )
    return waveform
