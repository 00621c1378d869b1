"""Reading audio: soundfile I/O, down-mix to mono, resampling, and checks that name the bad file."""

from __future__ import annotations

import errno
import functools
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speechrnn.errors import UserInputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
"""File suffixes read as audio (lower case; soundfile reads them all)."""

TRUNCATED = re.compile(r"data\s*:\s*(?P<declared>\d+)\s*\(should be (?P<held>\d+)\)")
"""libsndfile's own diagnosis of a WAV data chunk cut short (it would otherwise read what is there)."""

SILENCE_PEAK = 1e-4
"""Clips whose absolute peak stays below this (about -80 dBFS) are rejected as silent."""


class AudioError(UserInputError):
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


def missing_file_reason(path: Path) -> str:
    """Why ``path`` is not a readable regular file: absent, a broken or looping link, a folder."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"broken symbolic link (points to {os.readlink(path)})"
    if path.is_dir():
        return "is a folder, not an audio file"
    return "file not found"


def read_audio(
    path: str | os.PathLike,
    sample_rate: int,
    min_samples: int = 1,
    max_samples: int | None = None,
    crop: bool = False,
) -> torch.Tensor:
    """Load ``path`` as a float32 mono waveform ``(samples,)`` at ``sample_rate``.

    Any rate and channel count is accepted. Raises :class:`AudioError` naming the file when it is
    missing (or a broken link), unreadable (permission, format, corruption), empty, contains
    NaN/inf, is silent, or is shorter than ``min_samples`` after resampling. A clip longer than
    ``max_samples`` is an error too, unless ``crop`` keeps its first ``max_samples``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, missing_file_reason(path))
    try:
        with open(path, "rb") as raw, sf.SoundFile(raw) as handle:  # one open for the header and the samples
            extra_info, file_rate = handle.extra_info, handle.samplerate
            frames = handle.frames
            if max_samples is not None and crop:
                frames = min(frames, int(np.ceil(max_samples * file_rate / sample_rate)))
            samples = handle.read(frames, dtype="float32", always_2d=True)
    except PermissionError:
        raise AudioError(path, "permission denied (the file cannot be opened for reading)") from None
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
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
    if max_samples is not None and waveform.numel() > max_samples:
        if not crop:
            raise AudioError(
                path,
                f"too long ({waveform.numel() / sample_rate:.1f} s, the limit is {max_samples / sample_rate:.1f} s; "
                "max_seconds sets it, long_clips='crop' keeps the start instead)",
            )
        waveform = waveform[:max_samples]
    return waveform


def audio_files(item: str | os.PathLike) -> list[Path]:
    """``item`` itself, or for a folder the audio files below it (any depth, the suffixes of
    :data:`speechrnn.audio_io.AUDIO_EXTENSIONS`), sorted. A folder without any raises
    :class:`AudioError` naming it; a missing file is named when it is read."""
    path = Path(item)
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not found:
        raise AudioError(path, f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
    return found
