"""Feature settings and the MFCC front end shared by training, caching, inference and export.

Training uses torchaudio's MFCC. :func:`librosa_mfcc` is the reference implementation; the two
agree when librosa is called with the mapping below (checked in ``tests/test_features.py``):

=====================  ==============================  =========================================
setting                torchaudio ``MFCC``             librosa ``feature.mfcc``
=====================  ==============================  =========================================
window / hop (ms)      ``win_length``/``hop_length``   ``win_length``/``hop_length`` (samples)
FFT size               next power of two >= window     same ``n_fft``
padding                ``center=True``, reflect        ``center=True``, ``pad_mode="reflect"``
mel filters            ``mel_scale="htk"``, no norm    ``htk=True``, ``norm=None``
power to dB            ``AmplitudeToDB(top_db=80)``    ``power_to_db(ref=1, top_db=80)``
DCT                    type II, orthonormal            ``dct_type=2``, ``norm="ortho"``
deltas                 :func:`deltas` (torchaudio's    ``delta(width=5, mode="nearest")``;
                       ``compute_deltas``, width 5),   applied twice (not ``order=2``)
                       applied twice
=====================  ==============================  =========================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from speechrnn.normalization import Normalization, normalize_utterances
from speechrnn.padding import lengths_mask


@dataclass(frozen=True)
class FeatureSettings:
    """How audio becomes a feature sequence; stored in every checkpoint so inference matches training."""

    sample_rate: int | None = None
    """Audio is resampled to this rate (Hz) before analysis; None means the corpus's native rate
    (16 kHz for synthetic-commands and Speech Commands, 8 kHz for FSDD)."""
    n_mfcc: int = 13
    """Number of cepstral coefficients kept (13 keep the spectral envelope and drop most pitch
    harmonics: the new-speaker recipes' choice, with ``deltas=2`` as many inputs as 40 cepstra)."""
    n_mels: int = 40
    """Number of mel bands."""
    win_ms: float = 25.0
    """Analysis window length in milliseconds."""
    hop_ms: float = 10.0
    """Hop between frames in milliseconds (one feature frame per hop)."""
    f_min: float = 20.0
    """Lowest mel filter edge (Hz)."""
    f_max: float | None = None
    """Highest mel filter edge (Hz); None means the Nyquist frequency."""
    deltas: int = 2
    """0: MFCC only; 1: add deltas; 2: add deltas and delta-deltas."""
    normalize: Normalization = "auto"
    """'auto': 'speaker' when every clip's speaker is known, else 'utterance' (the DataModule decides
    from its records and checkpoints hold the decision; outside a DataModule, with no speakers, it
    is 'utterance'); 'utterance': zero mean and unit variance per clip and coefficient; 'speaker':
    per-coefficient statistics of all of a speaker's clips (Kaldi's per-speaker CMVN: a new voice is normalised with
    statistics of its own unlabelled recordings, and a short clip keeps what was said); 'dataset':
    per-coefficient statistics of the training split; 'none': raw coefficients."""

    def __post_init__(self) -> None:
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ValueError(f"features.sample_rate must be positive, got {self.sample_rate}")
        if not 1 <= self.n_mfcc <= self.n_mels:
            raise ValueError(f"features.n_mfcc must be in [1, n_mels={self.n_mels}], got {self.n_mfcc}")
        if self.hop_ms <= 0 or self.win_ms < self.hop_ms:
            raise ValueError(f"features.win_ms ({self.win_ms}) must be >= features.hop_ms ({self.hop_ms}) > 0")
        nyquist = self.sample_rate / 2 if self.sample_rate else float("inf")
        if self.f_max is not None and not self.f_min < self.f_max <= nyquist:
            raise ValueError(f"features.f_max must be in (f_min, {nyquist}], got {self.f_max}")
        if self.deltas not in (0, 1, 2):
            raise ValueError(f"features.deltas must be 0, 1 or 2, got {self.deltas}")
        if self.normalize not in get_args(Normalization):
            raise ValueError(
                f"features.normalize must be auto, utterance, speaker, dataset or none, got {self.normalize!r}"
            )

    @property
    def per_utterance(self) -> bool:
        """Whether each clip is normalised with its own statistics (``auto`` with no speakers known
        is per utterance)."""
        return self.normalize in ("utterance", "auto")

    def with_normalization(self, speakers_known: bool) -> FeatureSettings:
        """These settings with ``normalize='auto'`` decided: per speaker when every clip's speaker is
        known (FSDD leave-one-speaker-out: 84.9 % -> 91.4 % mean against per utterance), else per
        utterance."""
        if self.normalize != "auto":
            return self
        return dataclasses.replace(self, normalize="speaker" if speakers_known else "utterance")

    def resolve(self, native_sample_rate: int) -> FeatureSettings:
        """These settings with ``sample_rate`` filled in when it was left to the corpus."""
        if self.sample_rate is not None:
            return self
        return dataclasses.replace(self, sample_rate=native_sample_rate)

    @property
    def rate(self) -> int:
        if self.sample_rate is None:
            raise ValueError("features.sample_rate is unresolved; call FeatureSettings.resolve(native_rate) first")
        return self.sample_rate

    @property
    def win_length(self) -> int:
        return round(self.rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(self.rate * self.hop_ms / 1000)

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()

    @property
    def feature_dim(self) -> int:
        return self.n_mfcc * (1 + self.deltas)

    def num_frames(self, num_samples: int | torch.Tensor) -> Any:
        """Frames produced for a clip of ``num_samples`` (centred STFT)."""
        return num_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSettings:
        return cls(**values)


def deltas(coeffs: torch.Tensor, win_length: int = 5) -> torch.Tensor:
    """Time derivatives of ``(B, C, T)`` by regression over ``win_length`` frames, edge frames
    replicated: torchaudio's ``compute_deltas``, written as shifted differences because its grouped
    convolution (one group per batch row and coefficient) cannot be exported with a dynamic batch."""
    n = (win_length - 1) // 2
    frames = coeffs.shape[-1]
    padded = F.pad(coeffs, (n, n), mode="replicate")
    shifted = [k * (padded[..., n + k : n + k + frames] - padded[..., n - k : n - k + frames]) for k in range(1, n + 1)]
    return sum(shifted) / (n * (n + 1) * (2 * n + 1) / 3)


def reflect_past_ends(waveforms: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad ``(B, S)`` by ``width`` and mirror each clip's last samples past its own end (as a
    centred STFT does at the end of a lone clip); everything further is zeroed. Valid frames of a
    padded batch then equal those of each clip alone. Only the ``(B, width)`` mirrored block is
    gathered and written; the rest of the batch is masked once."""
    samples = waveforms.shape[1]
    ends = lengths.to(waveforms.device)[:, None]
    position = torch.arange(samples + width, device=waveforms.device)[None, :]
    padded = torch.where(position < ends, torch.nn.functional.pad(waveforms, (0, width)), 0.0)
    offsets = torch.arange(width, device=waveforms.device)[None, :]
    source = ends - 2 - offsets  # sample ``end + j`` mirrors sample ``end - 2 - j``
    mirrored = torch.where(source >= 0, waveforms.gather(1, source.clamp(0, samples - 1)), 0.0)
    return padded.scatter(1, ends + offsets, mirrored)


def vtln_warp_frequencies(frequencies: torch.Tensor, warps: torch.Tensor, nyquist: float) -> torch.Tensor:
    """Piecewise-linear vocal-tract-length warp of ``frequencies`` (Hz) by each of ``warps`` ``(B,)``:
    ``f -> warp * f`` below a hinge, then a straight line that maps the Nyquist frequency onto
    itself, so the axis stays within ``[0, nyquist]`` and monotonic. Returns ``(B, len(frequencies))``.
    Factor 1 is the identity."""
    warps = warps.to(frequencies.dtype)[:, None]
    hinge = 0.85 * nyquist / warps.clamp_min(1.0)
    low = frequencies[None, :] * warps
    high = warps * hinge + (nyquist - warps * hinge) * (frequencies[None, :] - hinge) / (nyquist - hinge)
    return torch.where(frequencies[None, :] <= hinge, low, high)


def _htk_mel(hz: float) -> float:
    return 2595.0 * float(np.log10(1.0 + hz / 700.0))


def warped_mel_filterbanks(settings: FeatureSettings, warps: torch.Tensor) -> torch.Tensor:
    """Mel filterbanks ``(B, n_freqs, n_mels)`` read on each clip's warped frequency axis (VTLN).

    Each is torchaudio's ``melscale_fbanks`` (HTK scale, no norm, as :class:`MFCCFrontend` uses)
    evaluated at :func:`vtln_warp_frequencies` of the FFT bins, so warp 1 gives exactly the
    unwarped filterbank."""
    n_freqs = settings.n_fft // 2 + 1
    nyquist = settings.rate / 2
    f_max = settings.f_max if settings.f_max is not None else nyquist
    bins = torch.linspace(0, settings.rate // 2, n_freqs, device=warps.device)
    frequencies = vtln_warp_frequencies(bins, warps, float(settings.rate // 2))
    mels = torch.linspace(_htk_mel(settings.f_min), _htk_mel(f_max), settings.n_mels + 2, device=warps.device)
    points = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    widths = points[1:] - points[:-1]
    slopes = points[None, None, :] - frequencies[..., None]  # (B, n_freqs, n_mels + 2)
    down = -slopes[..., :-2] / widths[:-1]
    up = slopes[..., 2:] / widths[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class MFCCFrontend(nn.Module):
    """Waveforms ``(B, samples)`` with ``lengths`` in samples -> features ``(B, T, F)`` and frame lengths.

    torchaudio's ``MelSpectrogram`` and DCT, with the 80 dB floor taken per clip over its valid
    frames, so a padded batch gives each clip exactly the features it gets alone (the cache builder
    featurises clips one at a time; on-device features run on whole batches). Runs on whatever
    device the module is on, and exports with the model. Dataset normalisation is left to the
    caller, which owns the training statistics.
    """

    top_db = 80.0

    def __init__(self, settings: FeatureSettings) -> None:
        super().__init__()
        self.settings = settings
        self.melspectrogram = torchaudio.transforms.MelSpectrogram(
            sample_rate=settings.rate,
            n_fft=settings.n_fft,
            win_length=settings.win_length,
            hop_length=settings.hop_length,
            f_min=settings.f_min,
            f_max=settings.f_max,
            n_mels=settings.n_mels,
            center=True,
            pad_mode="reflect",
            power=2.0,
            norm=None,
            mel_scale="htk",
        )
        self.register_buffer("dct", torchaudio.functional.create_dct(settings.n_mfcc, settings.n_mels, "ortho"))

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, warps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (B, T, F), frame lengths (B,) int64 on the CPU)``; ``T`` is the longest clip's.
        ``warps (B,)`` warps each clip's mel filterbank (vocal-tract-length perturbation)."""
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[-1], dtype=torch.int64)
        lengths = lengths.cpu().to(torch.int64)
        frames = int(self.settings.num_frames(lengths).max())
        return self.compute(waveforms, lengths, frames, warps=warps)

    def compute(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        frames: int | None = None,
        warps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The front end for ``lengths`` (int64, any device), keeping ``frames`` frames (all the STFT
        yields when None, as an exported graph needs: frames past each clip's end are masked like
        padding). ``warps (B,)`` reads each clip's spectrum through a warped mel filterbank
        (:func:`warped_mel_filterbanks`)."""
        audio = reflect_past_ends(waveforms.float(), lengths, self.settings.n_fft // 2)
        if warps is None:
            power = self.melspectrogram(audio)  # (B, n_mels, T)
        else:
            spectrum = self.melspectrogram.spectrogram(audio)  # (B, n_freqs, T)
            filterbanks = warped_mel_filterbanks(self.settings, warps.to(spectrum.device))
            power = torch.bmm(filterbanks.transpose(1, 2), spectrum)
        return self._from_mel_power(power, lengths, frames)

    def compute_warps(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, warps: Sequence[float | None]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What :meth:`forward` gives with every clip read through each of ``warps`` in turn (None:
        the unwarped filterbank), the STFT computed once for all of them: measuring how warps move a
        speaker's statistics needs many warps of the same clips."""
        lengths = lengths.cpu().to(torch.int64)
        frames = int(self.settings.num_frames(lengths).max())
        audio = reflect_past_ends(waveforms.float(), lengths, self.settings.n_fft // 2)
        spectrum = self.melspectrogram.spectrogram(audio)  # (B, n_freqs, T)
        results = []
        for warp in warps:
            if warp is None:
                power = self.melspectrogram.mel_scale(spectrum)
            else:
                bank = warped_mel_filterbanks(self.settings, torch.tensor([float(warp)], device=spectrum.device))[0]
                power = torch.matmul(bank.transpose(0, 1), spectrum)
            results.append(self._from_mel_power(power, lengths, frames))
        return results

    def _from_mel_power(
        self, power: torch.Tensor, lengths: torch.Tensor, frames: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and frame lengths from mel power ``(B, n_mels, T)``: decibels with each clip's own
        80 dB floor, the DCT, deltas, and utterance normalisation or masking past each clip's end."""
        frame_lengths = self.settings.num_frames(lengths)
        if frames is not None:
            power = power[..., :frames]
        frames = power.shape[-1]
        decibels = 10.0 * torch.log10(power.clamp_min(1e-10))
        valid = lengths_mask(frame_lengths, frames, decibels.device).unsqueeze(1)
        peak = decibels.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        decibels = torch.maximum(decibels, peak - self.top_db)
        coeffs = torch.matmul(decibels.transpose(1, 2), self.dct).transpose(1, 2)  # (B, n_mfcc, T)
        parts = [coeffs]
        if self.settings.deltas:
            # Deltas replicate edge frames; hold each clip's last frame so its own edge is replicated.
            steps = torch.arange(frames, device=coeffs.device)
            last = torch.minimum(steps[None, :], frame_lengths.to(coeffs.device)[:, None] - 1)
            index = last[:, None, :].expand_as(coeffs)
            for _ in range(self.settings.deltas):
                parts.append(deltas(parts[-1].gather(2, index)))
        features = torch.cat(parts, dim=1).transpose(1, 2).contiguous()
        if self.settings.per_utterance:
            features = normalize_utterances(features, frame_lengths)
        else:
            features = features * valid.transpose(1, 2).to(features.dtype)
        return features, frame_lengths


def librosa_mfcc(waveform: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Reference MFCC ``(T, F)`` computed with librosa using the mapping in the module docstring."""
    import librosa

    mel_power = librosa.feature.melspectrogram(
        y=np.asarray(waveform, dtype=np.float32),
        sr=settings.rate,
        n_fft=settings.n_fft,
        win_length=settings.win_length,
        hop_length=settings.hop_length,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=settings.n_mels,
        fmin=settings.f_min,
        fmax=settings.f_max,
        htk=True,
        norm=None,
    )
    log_mel = librosa.power_to_db(mel_power, ref=1.0, amin=1e-10, top_db=80.0)
    coeffs = librosa.feature.mfcc(S=log_mel, n_mfcc=settings.n_mfcc, dct_type=2, norm="ortho", lifter=0)
    parts = [coeffs]
    for _ in range(settings.deltas):
        parts.append(librosa.feature.delta(parts[-1], width=5, mode="nearest"))
    features = np.concatenate(parts, axis=0).T
    if settings.per_utterance:
        features = (features - features.mean(0)) / (features.std(0) + 1e-5)
    return features.astype(np.float32)
