"""Audio of any length, block by block: soundfile's block reading, mono, and resampling that gives
block by block what resampling the whole file at once gives.

:func:`open_audio` checks a file as :func:`speechrnn.audio_io.read_audio` does (missing, unreadable,
truncated, empty: an :class:`~speechrnn.audio_io.AudioError` naming it) without reading its samples;
:meth:`AudioStream.blocks` then reads them a block at a time (NaN or infinite samples are an error
naming the file and the time). :class:`BlockResampler` runs torchaudio's resampler (the one training
used) on each block with enough context on both sides that every output sample equals the whole
file's. A file of any length is read in memory that does not grow with it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speechrnn.audio_io import TRUNCATED, AudioError, check_sample_rate, missing_file_reason, to_mono

BLOCK_SECONDS = 10.0
"""Seconds of audio read at a time."""


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """soundfile's and the OS's errors while opening or reading ``path`` as one :class:`AudioError`."""
    try:
        yield
    except PermissionError:
        raise AudioError(path, "permission denied (the file cannot be opened for reading)") from None
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        if isinstance(error, AudioError):
            raise
        raise AudioError(path, f"cannot read audio (unknown format or corrupt file): {error}") from None


@dataclass(frozen=True)
class AudioStream:
    """An audio file checked by :func:`open_audio`, read with :meth:`blocks`."""

    path: Path
    sample_rate: int
    frames: int
    """Samples per channel."""
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def blocks(self, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
        """The file's samples, mono float32, ``block_seconds`` at a time (the last block shorter)."""
        size = max(1, round(block_seconds * self.sample_rate))
        position = 0
        with _read_errors(self.path), open(self.path, "rb") as raw, sf.SoundFile(raw) as handle:
            for block in handle.blocks(blocksize=size, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    where = position + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    at = where / self.sample_rate
                    raise AudioError(self.path, f"contains NaN or infinite samples (at {at:.2f} s)")
                position += len(block)
                yield to_mono(block)


def open_audio(path: str | os.PathLike) -> AudioStream:
    """Check ``path``'s header (missing, a folder, a broken link, unreadable, truncated, empty, a
    sample rate outside :data:`~speechrnn.audio_io.SAMPLE_RATE_RANGE` are an :class:`AudioError`
    naming it) and return it for :meth:`AudioStream.blocks`. Any length is accepted: blocks keep
    memory flat, but a rate that lies would still multiply the work by the resampling ratio."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, missing_file_reason(path))
    with _read_errors(path), open(path, "rb") as raw, sf.SoundFile(raw) as handle:
        stream = AudioStream(path, int(handle.samplerate), int(handle.frames), int(handle.channels))
        truncated = TRUNCATED.search(handle.extra_info)
    if truncated:
        raise AudioError(
            path,
            f"truncated file: its header declares {truncated['declared']} bytes of audio, it holds {truncated['held']}",
        )
    if stream.frames <= 0:
        raise AudioError(path, "empty file (no samples)", "empty")
    check_sample_rate(path, stream.sample_rate)
    return stream


class BlockResampler:
    """torchaudio's band-limited resampling from ``orig_freq`` to ``new_freq``, block by block.

    :meth:`push` takes the next samples and returns every output sample that they complete;
    :meth:`flush` returns the rest once the input has ended. Together they give exactly the samples
    ``torchaudio.transforms.Resample(orig_freq, new_freq)`` gives on the whole input (up to float
    rounding): torchaudio computes each group of ``new/gcd`` outputs from the input around one group of
    ``orig/gcd`` samples, ``width`` samples to either side, and every block is resampled with at least
    that much of its neighbours' audio. The same rate passes through.
    """

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        gcd = math.gcd(self.orig_freq, self.new_freq)
        self.step, self.out_step = self.orig_freq // gcd, self.new_freq // gcd
        self.resampler = None
        if self.orig_freq != self.new_freq:
            self.resampler = torchaudio.transforms.Resample(self.orig_freq, self.new_freq)
        self.width = int(getattr(self.resampler, "width", 0))
        self.context = self.step * math.ceil((self.width + self.step) / self.step)
        """Input samples kept before the first group not yet resampled (a whole number of groups)."""
        self.buffer = np.zeros(0, dtype=np.float32)
        self.start = 0
        """Input index of ``buffer[0]`` (a multiple of ``step``)."""
        self.done = 0
        """Groups of input whose outputs have been returned."""

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.resampler is None:
            return samples
        self.buffer = np.concatenate([self.buffer, samples])
        ready = (self.start + len(self.buffer) - self.width) // self.step
        return self._emit(ready) if ready > self.done else np.zeros(0, dtype=np.float32)

    def flush(self) -> np.ndarray:
        if self.resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._emit(None)

    def _emit(self, groups: int | None) -> np.ndarray:
        """The outputs of input groups ``done`` up to ``groups`` (None: to the end of the input)."""
        first = max(0, self.done * self.step - self.context)
        with torch.inference_mode():
            out = self.resampler(torch.from_numpy(np.ascontiguousarray(self.buffer[first - self.start :]))).numpy()
        offset = first // self.step
        stop = None if groups is None else (groups - offset) * self.out_step
        result = out[(self.done - offset) * self.out_step : stop]
        if groups is not None:
            self.done = groups
            keep = max(0, self.done * self.step - self.context)
            self.buffer = self.buffer[keep - self.start :]
            self.start = keep
        else:
            self.buffer, self.start, self.done = np.zeros(0, dtype=np.float32), 0, 0
        return result.copy()
