"""Training-time augmentation on padded batches: time shift, speed perturbation, vocal-tract-length
perturbation, gain, background or coloured noise, SpecAugment masks.

Everything works on whole batches (on the accelerator when the batch is there) and keeps
``lengths`` on the CPU. Shifts, speeds, warps and noise draw from a seeded ``torch.Generator``;
SpecAugment uses torchaudio's masking transforms, which draw from torch's global generator (seeded
by the CLI's ``seed_everything``). Speed, warp and noise need waveforms, so they need the waveform
cache (``on_device_features``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from torch import nn

from speechrnn.audio_io import AUDIO_EXTENSIONS, read_audio
from speechrnn.padding import lengths_mask


@dataclass(frozen=True)
class AugmentSettings:
    """Training-split augmentation; every part is off by default."""

    time_shift_ms: float = 0.0
    """Largest random shift of each clip in milliseconds (frames or samples are prepended or dropped
    at the start); 0 turns it off."""
    noise_dir: str | None = None
    """Folder of noise recordings mixed into training clips (needs ``on_device_features``, which
    keeps waveforms until the batch is on the device); None turns it off."""
    background_noise: bool = False
    """Mix the corpus's own background recordings into training clips, from the training split's
    regions only (an open-set corpus's ``_silence_`` material, :mod:`speechrnn.data.open_set`): a keyword
    spotter then hears its words over the noise it will meet in streams, and no test background leaks
    into training. Needs ``on_device_features``; not with ``noise_dir``."""
    noise_snr_db: tuple[float, float] = (5.0, 20.0)
    """Range of the signal-to-noise ratio (dB) drawn for each clip."""
    noise_probability: float = 0.8
    """Fraction of training clips that get noise."""
    coloured_noise: bool = False
    """Without ``noise_dir``: mix synthetic coloured noise (spectral slope drawn per clip between
    white and brown) at ``noise_snr_db`` into ``noise_probability`` of the clips."""
    speed_factors: tuple[float, ...] = ()
    """Speed perturbation: each training clip is resampled to one of these speeds (tempo and pitch
    together, as Kaldi's 0.9/1.0/1.1), drawn at random; empty turns it off."""
    vtln_warp: float = 0.0
    """Vocal-tract-length perturbation: each clip's mel filterbank reads a frequency axis warped by
    a factor drawn uniformly from ``[1 - vtln_warp, 1 + vtln_warp]``; 0 turns it off."""
    gain_db: float = 0.0
    """Largest change of each clip's level in dB (drawn uniformly in ``[-gain_db, gain_db]``): per
    recording level differences, which per-speaker normalisation keeps (per-utterance normalisation
    removes them, so gain changes nothing there); 0 turns it off."""
    freq_masks: int = 0
    """SpecAugment: number of frequency masks per clip."""
    freq_mask_width: int = 8
    """SpecAugment: largest width of a frequency mask (coefficients)."""
    time_masks: int = 0
    """SpecAugment: number of time masks per clip."""
    time_mask_width: int = 10
    """SpecAugment: largest width of a time mask (frames)."""
    augmented_statistics: bool = True
    """With ``features.normalize='speaker'``: normalise a speed-perturbed or warped clip with its
    speaker's statistics under the same speed and warp (a new voice is normalised with its own
    statistics, so a simulated one should be too) instead of the clean recordings' statistics."""
    seed: int = 0
    """Seed of the shift and noise draws."""

    def __post_init__(self) -> None:
        if self.time_shift_ms < 0:
            raise ValueError(f"augment.time_shift_ms must be >= 0, got {self.time_shift_ms}")
        low, high = self.noise_snr_db
        if low > high:
            raise ValueError(f"augment.noise_snr_db must be (low, high) with low <= high, got {self.noise_snr_db}")
        if self.background_noise and self.noise_dir:
            raise ValueError("augment.background_noise and augment.noise_dir are two sources of noise: give one")
        if not 0 <= self.noise_probability <= 1:
            raise ValueError(f"augment.noise_probability must be in [0, 1], got {self.noise_probability}")
        if any(not 0.5 <= factor <= 2.0 for factor in self.speed_factors):
            raise ValueError(f"augment.speed_factors must lie in [0.5, 2], got {self.speed_factors}")
        if self.gain_db < 0:
            raise ValueError(f"augment.gain_db must be >= 0, got {self.gain_db}")
        if not 0 <= self.vtln_warp < 0.5:
            raise ValueError(f"augment.vtln_warp must be in [0, 0.5), got {self.vtln_warp}")
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return bool(self.time_shift_ms or self.freq_masks or self.time_masks or self.needs_waveforms)

    @property
    def needs_waveforms(self) -> bool:
        """Whether some part works on waveforms (and so needs ``on_device_features``)."""
        noise = self.noise_dir or self.background_noise or self.coloured_noise
        return bool(noise or self.speeds or self.vtln_warp or self.gain_db)

    @property
    def speeds(self) -> tuple[float, ...]:
        """The speed factors, or none when they are all 1."""
        return self.speed_factors if any(factor != 1 for factor in self.speed_factors) else ()


def shift_sequences(
    x: torch.Tensor, lengths: torch.Tensor, shifts: torch.Tensor, min_length: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each ``(batch, time, ...)`` sequence right by ``shifts[b]`` steps (zeros prepended) or
    left (leading steps dropped), keeping at least ``min_length`` steps; returns the batch and the
    new CPU lengths."""
    shifts = torch.maximum(shifts.cpu(), min_length - lengths)
    new_lengths = lengths + shifts
    width = int(new_lengths.max())
    position = torch.arange(width)[None, :]
    source = position - shifts[:, None]
    valid = (source >= 0) & (source < lengths[:, None]) & (position < new_lengths[:, None])
    index = source.clamp(0, x.shape[1] - 1).to(x.device)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    shifted = x.gather(1, index) * valid.to(x.device).view(*valid.shape, *([1] * (x.dim() - 2)))
    return shifted, new_lengths


WARP_GRID = 9
"""Warp factors at which :class:`AugmentedStatistics` measures each speaker (interpolated between)."""


class AugmentedStatistics:
    """How speed perturbation and vocal-tract-length warps move each speaker's feature statistics:
    per speaker ``g``, speed index ``k`` and warp ``w``, the mean moves by ``speed_shift[g, k] +
    warp_shift[g, w]`` and the deviation scales by ``speed_scale[g, k] * warp_scale[g, w]`` (the two
    effects are measured apart and combined; warps between grid points are interpolated)."""

    def __init__(
        self,
        speed_shift: torch.Tensor,
        speed_scale: torch.Tensor,
        warp_grid: torch.Tensor,
        warp_shift: torch.Tensor,
        warp_scale: torch.Tensor,
    ) -> None:
        self.speed_shift, self.speed_scale = speed_shift, speed_scale  # (G, K, F)
        self.warp_grid = warp_grid  # (W,)
        self.warp_shift, self.warp_scale = warp_shift, warp_scale  # (G, W, F)

    def adjust(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        groups: torch.Tensor,
        speeds: torch.Tensor | None,
        warps: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean per-clip statistics ``(B, 1, F)`` of speakers ``groups (B,)`` -> those of the clips
        under their ``speeds`` and ``warps`` (either may be None: not applied)."""
        shift = torch.zeros_like(mean[:, 0])
        scale = torch.ones_like(std[:, 0])
        if speeds is not None and self.speed_shift.shape[1]:
            shift = shift + self.speed_shift[groups, speeds].to(shift)
            scale = scale * self.speed_scale[groups, speeds].to(scale)
        if warps is not None and len(self.warp_grid) > 1:
            grid = self.warp_grid
            position = ((warps.cpu() - grid[0]) / (grid[1] - grid[0])).clamp(0, len(grid) - 1)
            low = position.floor().long().clamp(max=len(grid) - 2)
            frac = (position - low)[:, None]
            for table, combine in ((self.warp_shift, "add"), (self.warp_scale, "mul")):
                value = table[groups, low] * (1 - frac) + table[groups, low + 1] * frac
                if combine == "add":
                    shift = shift + value.to(shift)
                else:
                    scale = scale * value.to(scale)
        return mean + shift[:, None], std * scale[:, None]


class Augmenter(nn.Module):
    """Applies :class:`AugmentSettings` to training batches (waveforms or features)."""

    def __init__(
        self, settings: AugmentSettings, sample_rate: int, hop_length: int, noise: torch.Tensor | None = None
    ) -> None:
        """``noise``: the noise to mix in, at ``sample_rate`` (the training background of
        ``background_noise``); None: ``noise_dir``'s recordings, if any."""
        super().__init__()
        self.settings = settings
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.freq_mask = torchaudio.transforms.FrequencyMasking(max(1, settings.freq_mask_width), iid_masks=True)
        self.time_mask = torchaudio.transforms.TimeMasking(max(1, settings.time_mask_width), iid_masks=True)
        if noise is None:
            noise = self._load_noise(settings.noise_dir, sample_rate)
        self.register_buffer("noise", noise.float(), persistent=False)
        self.resamplers = nn.ModuleList(
            torchaudio.transforms.Resample(round(sample_rate * factor), sample_rate) for factor in settings.speeds
        )

    @staticmethod
    def _load_noise(noise_dir: str | os.PathLike | None, sample_rate: int) -> torch.Tensor:
        if noise_dir is None:
            return torch.zeros(0)
        files = sorted(p for p in Path(noise_dir).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"augment.noise_dir {noise_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        return torch.cat([read_audio(f, sample_rate, max_seconds=None) for f in files])  # noise may be long

    def _draw_shifts(self, count: int, unit_samples: int) -> torch.Tensor:
        largest = int(self.settings.time_shift_ms * self.sample_rate / 1000 / unit_samples)
        return torch.randint(-largest, largest + 1, (count,), generator=self.generator)

    def draw_speeds(self, count: int) -> torch.Tensor:
        """Index into ``settings.speeds`` of each of ``count`` clips."""
        return torch.randint(len(self.settings.speeds), (count,), generator=self.generator)

    def waveforms(
        self, audio: torch.Tensor, lengths: torch.Tensor, min_samples: int, speeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Time shift, speed perturbation (``speeds``: each clip's index into ``settings.speeds``, drawn
        when None), gain and noise on ``(batch, samples)`` waveforms."""
        if self.settings.time_shift_ms:
            audio, lengths = shift_sequences(audio, lengths, self._draw_shifts(len(lengths), 1), min_samples)
        if self.settings.speeds:
            choice = self.draw_speeds(len(lengths)) if speeds is None else speeds
            audio, lengths = self.change_speed(audio, lengths, choice, min_samples)
        if self.settings.gain_db:
            decibels = self.settings.gain_db * (2 * torch.rand(len(lengths), generator=self.generator) - 1)
            audio = audio * (10 ** (decibels / 20)).to(audio)[:, None]
        if self.noise.numel():
            audio = self._mix(audio, lengths, self._noise_segments(audio.shape[0], audio.shape[1]))
        elif self.settings.coloured_noise:
            audio = self._mix(audio, lengths, self._coloured_noise(audio.shape[0], audio.shape[1]))
        return audio, lengths

    def change_speed(
        self, audio: torch.Tensor, lengths: torch.Tensor, choice: torch.Tensor, min_samples: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample clip ``b`` to speed ``settings.speeds[choice[b]]``, one resampling call per speed
        for all the clips that drew it; returns the batch and its new CPU lengths."""
        rate = self.sample_rate
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for k, (factor, resampler) in enumerate(zip(self.settings.speeds, self.resamplers, strict=True)):
            rows = (choice == k).nonzero().flatten()
            if len(rows) == 0:
                continue
            old = lengths[rows]
            if factor == 1:
                parts.append((rows, audio[rows.to(audio.device)], old))
                continue
            new = torch.clamp(torch.ceil(old * rate / round(rate * factor)).to(torch.int64), min=min_samples)
            width = int(old.max())
            parts.append((rows, resampler(audio[rows.to(audio.device), :width]), new))
        width = max(int(new.max()) for _, _, new in parts)
        out = audio.new_zeros(len(lengths), width)
        new_lengths = lengths.clone()
        for rows, clips, new in parts:
            span = min(width, clips.shape[1])
            out[rows.to(audio.device), :span] = clips[:, :span]
            new_lengths[rows] = new
        return out * lengths_mask(new_lengths, width, audio.device), new_lengths

    def draw_warps(self, count: int) -> torch.Tensor:
        """VTLN warp factors ``(count,)`` uniform in ``[1 - vtln_warp, 1 + vtln_warp]``."""
        width = self.settings.vtln_warp
        return 1 - width + 2 * width * torch.rand(count, generator=self.generator)

    def _noise_segments(self, batch: int, width: int) -> torch.Tensor:
        if self.noise.numel() < width:
            noise = self.noise.repeat(width // self.noise.numel() + 1)
        else:
            noise = self.noise
        starts = torch.randint(0, noise.numel() - width + 1, (batch,), generator=self.generator)
        return noise[(starts[:, None] + torch.arange(width)[None, :]).to(noise.device)]

    def _coloured_noise(self, batch: int, width: int) -> torch.Tensor:
        """Noise ``(batch, width)`` with power falling as ``f ** -slope``, slope uniform in [0, 2]."""
        white = torch.randn(batch, width, generator=self.generator)
        slope = 2 * torch.rand(batch, 1, generator=self.generator)
        spectrum = torch.fft.rfft(white)
        frequency = torch.arange(spectrum.shape[1]).clamp_min(1).to(white.dtype)[None, :]
        return torch.fft.irfft(spectrum * frequency ** (-slope / 2), n=width)

    def _mix(self, audio: torch.Tensor, lengths: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Add ``segments`` to ``noise_probability`` of the clips, each at an SNR drawn from ``noise_snr_db``."""
        batch, width = audio.shape
        segments = segments.to(audio.device)
        low, high = self.settings.noise_snr_db
        snr = low + (high - low) * torch.rand(batch, generator=self.generator)
        chosen = torch.rand(batch, generator=self.generator) < self.settings.noise_probability
        mask = lengths_mask(lengths, width, audio.device)
        count = lengths.to(audio.device).clamp_min(1)
        signal_power = (audio.square() * mask).sum(1) / count
        noise_power = (segments.square() * mask).sum(1) / count
        scale = torch.sqrt(signal_power / (noise_power.clamp_min(1e-12) * 10 ** (snr.to(audio.device) / 10)))
        scale = scale * chosen.to(audio.device)
        return audio + scale[:, None] * segments * mask

    def features(self, features: torch.Tensor, lengths: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame shift (when the waveform was not shifted already) and SpecAugment on ``(batch, time, F)``."""
        if shift and self.settings.time_shift_ms:
            features, lengths = shift_sequences(features, lengths, self._draw_shifts(len(lengths), self.hop_length))
        if self.settings.freq_masks or self.settings.time_masks:
            spec = features.transpose(1, 2)
            for _ in range(self.settings.freq_masks):
                spec = self.freq_mask(spec)
            for _ in range(self.settings.time_masks):
                spec = self.time_mask(spec)
            valid = lengths_mask(lengths, spec.shape[2], spec.device)
            features = (spec * valid[:, None, :]).transpose(1, 2)
        return features, lengths
