"""Reading audio: soundfile I/O, down-mix to mono, resampling, and checks that name the bad file.

Every reader checks the header before it decodes or resamples anything (:func:`check_header`): a
sample rate outside :data:`SAMPLE_RATE_RANGE` is refused, since a header that lies (16,000 samples
said to be at 1 Hz) would otherwise be resampled into hours of audio and gigabytes of memory; and a
file read whole is refused when it lasts longer than its limit (:data:`MAX_SECONDS` by default).
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

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

SAMPLE_RATE_RANGE = (1_000, 768_000)
"""Sample rates (Hz) accepted from a header: telephone-band audio and below-1 kHz sensor rates at the
low end, 768 kHz studio audio at the high end; anything else is a header that lies or not audio."""

MAX_SECONDS = 600.0
"""Longest file read whole into memory, in seconds, unless the caller sets its own limit: ten minutes
are 38 MB at 16 kHz; longer recordings are for ``speechrnn spot``, which reads them block by block."""

AudioProblem = Literal["missing", "unreadable", "empty", "truncated", "rate", "too_long", "unusable"]
"""What is wrong with a file, for callers that answer differently (a server's status codes)."""


class AudioError(UserInputError):
    """A file that cannot be used as training or inference audio; the message names the file.
    ``problem`` says what kind of problem it is."""

    def __init__(self, path: str | os.PathLike | AudioBytes, reason: str, problem: AudioProblem = "unusable") -> None:
        self.path = str(path)
        self.reason = reason
        self.problem = problem
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[AudioError], tuple[str, str, AudioProblem]]:
        """Pickle by the constructor's arguments: a cache worker process hands its errors back."""
        return type(self), (self.path, self.reason, self.problem)


@dataclass(frozen=True)
class AudioBytes:
    """Audio held in memory (an upload), read by :func:`read_audio` like a file without ever being
    written to disk; ``name`` is what errors call it."""

    data: bytes
    name: str = "upload"

    def __str__(self) -> str:
        return self.name


AudioSource = str | os.PathLike | AudioBytes
"""A file's path, or audio bytes in memory."""


def check_sample_rate(path: AudioSource, rate: int) -> None:
    """An :class:`AudioError` (``problem="rate"``) naming ``path`` when ``rate`` (from its header, or
    given with raw samples) is outside :data:`SAMPLE_RATE_RANGE`."""
    low, high = SAMPLE_RATE_RANGE
    if not low <= rate <= high:
        raise AudioError(
            path,
            f"sample rate {rate} Hz is outside {low}-{high} Hz: the header is wrong or this is not audio",
            "rate",
        )


def check_header(
    path: AudioSource,
    rate: int,
    frames: int,
    sample_rate: int,
    max_samples: int | None,
    hint: str = "max_seconds sets it, long_clips='crop' keeps the start instead",
) -> None:
    """Refuse ``path`` from its header alone, before anything is decoded or resampled: a sample rate
    outside :data:`SAMPLE_RATE_RANGE`, or more than ``max_samples`` samples once resampled from
    ``rate`` to ``sample_rate`` (None: no length limit); ``hint`` says how to lift the limit."""
    check_sample_rate(path, rate)
    resampled = -(-frames * sample_rate // rate)
    if max_samples is not None and resampled > max_samples:
        raise AudioError(
            path,
            f"too long ({resampled / sample_rate:.1f} s, the limit is {max_samples / sample_rate:.1f} s; {hint})",
            "too_long",
        )


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


def _open(path: AudioSource) -> BinaryIO:
    if isinstance(path, AudioBytes):
        return io.BytesIO(path.data)
    return open(path, "rb")


def read_audio(
    path: AudioSource,
    sample_rate: int,
    min_samples: int = 1,
    max_samples: int | None = None,
    crop: bool = False,
    max_seconds: float | None = MAX_SECONDS,
) -> torch.Tensor:
    """Load ``path`` (a file, or :class:`AudioBytes` in memory) as a float32 mono waveform
    ``(samples,)`` at ``sample_rate``.

    Any rate in :data:`SAMPLE_RATE_RANGE` and any channel count is accepted. Raises
    :class:`AudioError` naming the file when it is missing (or a broken link), unreadable
    (permission, format, corruption), empty, contains NaN/inf, is silent, or is shorter than
    ``min_samples`` after resampling. A clip longer than ``max_samples`` (default: ``max_seconds``
    at ``sample_rate``; None for both: any length) is an error too, unless ``crop`` keeps its first
    ``max_samples``. The rate and length are checked from the header, before decoding.
    """
    if isinstance(path, AudioBytes):
        if not path.data:
            raise AudioError(path, "empty upload (no bytes)", "empty")
    else:
        path = Path(path)
        if not path.is_file():
            raise AudioError(path, missing_file_reason(path), "missing")
    hint = "max_seconds sets it, long_clips='crop' keeps the start instead"
    if max_samples is None and max_seconds is not None:
        max_samples, crop = round(max_seconds * sample_rate), False
        hint = "speechrnn spot reads longer recordings block by block"
    try:
        with _open(path) as raw, sf.SoundFile(raw) as handle:  # one open for the header and the samples
            extra_info, file_rate = handle.extra_info, handle.samplerate
            frames = handle.frames
            if max_samples is not None and crop:
                frames = min(frames, int(np.ceil(max_samples * file_rate / sample_rate)))
            check_header(path, file_rate, frames, sample_rate, None if crop else max_samples, hint)
            samples = handle.read(frames, dtype="float32", always_2d=True)
    except PermissionError:
        raise AudioError(path, "permission denied (the file cannot be opened for reading)", "unreadable") from None
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        if isinstance(error, AudioError):
            raise
        if isinstance(path, AudioBytes):  # the message would name a BytesIO object
            error = getattr(error, "error_string", None) or error
        raise AudioError(path, f"cannot read audio (unknown format or corrupt file): {error}", "unreadable") from None
    truncated = TRUNCATED.search(extra_info)
    if truncated:
        raise AudioError(
            path,
            f"truncated file: its header declares {truncated['declared']} bytes of audio, it holds {truncated['held']}",
            "truncated",
        )
    if samples.size == 0:
        raise AudioError(path, "empty file (no samples)", "empty")
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
