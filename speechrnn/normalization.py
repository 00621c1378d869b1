"""Feature normalisation: the modes, and the statistics and arithmetic that training and inference share.

One setting names the idea everywhere (``features.normalize`` of the audio DataModules,
``SequenceDataModule(normalize=...)``, a DataModule's ``normalization``, ``Predictor.normalization``):

- ``utterance``: each clip with its own per-coefficient mean and deviation (done by the front end);
- ``speaker``: with the statistics of all of its speaker's clips (Kaldi's per-speaker CMVN);
- ``dataset``: with the statistics of the training split;
- ``none``: raw features;
- ``auto`` (a setting, never a decision): ``speaker`` when every clip's speaker is known, else ``utterance``.

The DataModules compute statistics with :class:`FrameMoments`; the inference graph applies them with
:func:`standardize` and pools an enrolled speaker's with :func:`pooled_moments`. This module knows
nothing of DataModules, so the deployable graph does not depend on the training data layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from speechrnn.padding import lengths_mask

Normalization = Literal["auto", "utterance", "speaker", "dataset", "none"]
EPS = 1e-5
"""Added to every deviation, so a constant coefficient does not divide by zero."""


def normalize_utterances(features: torch.Tensor, lengths: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-clip, per-coefficient mean/variance normalisation over valid frames of ``(B, T, F)``.

    Padding stays zero so it carries no information.
    """
    mask = lengths_mask(lengths, features.shape[1], features.device).unsqueeze(-1).to(features.dtype)
    count = mask.sum(1, keepdim=True).clamp_min(1)
    mean = (features * mask).sum(1, keepdim=True) / count
    centred = (features - mean) * mask
    std = (centred.square().sum(1, keepdim=True) / count).sqrt()
    return centred / (std + eps)


def pooled_moments(
    features: torch.Tensor, lengths: torch.Tensor, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and deviation ``(F,)`` over the valid frames of every clip of ``(B, T, F)``
    together (a speaker's statistics from a batch of its recordings); the deviation has ``eps`` added,
    as :class:`FrameMoments` adds it."""
    mask = lengths_mask(lengths, features.shape[1], features.device).unsqueeze(-1).to(features.dtype)
    count = mask.sum().clamp_min(1)
    mean = (features * mask).sum((0, 1)) / count
    std = (((features - mean) * mask).square().sum((0, 1)) / count).sqrt()
    return mean, std + eps


def standardize(features: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Dataset or speaker normalisation of ``(B, T, F)``: ``(x - mean) / std`` on valid frames, zeros
    on padding; ``mean``/``std`` are ``(F,)`` (the training split's) or ``(B, 1, F)`` (each clip's
    speaker's). The one place training, evaluation, inference and exported models apply it."""
    valid = lengths_mask(lengths, features.shape[1], features.device).unsqueeze(-1)
    return torch.where(valid, (features - mean) / std, torch.zeros_like(features))


class FrameMoments:
    """Running per-group sums of feature frames, for means and deviations over many padded batches."""

    def __init__(self, groups: int, dim: int) -> None:
        self.total = torch.zeros(groups, dim, dtype=torch.float64)
        self.total_sq = torch.zeros(groups, dim, dtype=torch.float64)
        self.count = torch.zeros(groups, dtype=torch.float64)

    def add(self, features: torch.Tensor, lengths: torch.Tensor, groups: torch.Tensor) -> None:
        """Add the valid frames of ``features (B, T, F)`` to each row's group ``(B,)``."""
        valid = lengths_mask(lengths, features.shape[1], features.device).unsqueeze(-1)
        frames = (features.double() * valid).cpu()
        self.total.index_add_(0, groups.cpu(), frames.sum(1))
        self.total_sq.index_add_(0, groups.cpu(), frames.square().sum(1))
        self.count.index_add_(0, groups.cpu(), lengths.cpu().double())

    def add_sequence(self, frames: np.ndarray, group: int) -> None:
        """Add every frame of one unpadded sequence ``(T, F)`` to ``group`` (in float64)."""
        sequence = torch.from_numpy(np.asarray(frames, dtype=np.float64))
        self.add(sequence[None], torch.tensor([len(sequence)]), torch.tensor([int(group)]))

    def add_frames(self, frames: torch.Tensor, groups: torch.Tensor) -> None:
        """Add frames ``(N, F)``, frame ``n`` to group ``groups[n]``: many sequences in one call,
        where :meth:`add_sequence` costs a few tensor operations per sequence."""
        frames, groups = frames.double().cpu(), groups.cpu().to(torch.int64)
        self.total.index_add_(0, groups, frames)
        self.total_sq.index_add_(0, groups, frames.square())
        self.count += torch.bincount(groups, minlength=len(self.count)).double()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std + EPS)`` per group, float32 ``(G, F)``."""
        count = self.count.clamp_min(1)[:, None]
        mean = self.total / count
        std = (self.total_sq / count - mean.square()).clamp_min(0).sqrt() + EPS
        return mean.float().numpy(), std.float().numpy()


def normalization_of(data_config: Mapping[str, Any]) -> Normalization:
    """The normalisation a model was trained with, from its checkpoint's ``data_config``: the audio
    feature settings' (decided in training; an undecided ``auto`` is per utterance, as the front end
    reads it), or for feature sequences ``dataset`` when training statistics are stored, else ``none``."""
    features = data_config.get("features")
    if features:
        mode = features.get("normalize", "auto")
        return "utterance" if mode == "auto" else mode
    return "dataset" if data_config.get("feature_mean") is not None else "none"


__all__ = [
    "EPS",
    "FrameMoments",
    "Normalization",
    "normalization_of",
    "normalize_utterances",
    "pooled_moments",
    "standardize",
]
