"""A user's own unlabelled recordings beside a run's corpus, as one DataModule.

:class:`RecordingsDataModule` wraps a run's (set-up) DataModule and appends the features of extra
audio files to its store: the training and validation splits are the run's, the ``test`` split is
the recordings. Self-training (:mod:`speechrnn.adapt`) can then pseudo-label the recordings and
fine-tune on the training split plus them with the ordinary batches ``(features, lengths, targets,
indices)``, without the wrapped DataModule knowing about them.

Each recording is featurised with the run's feature settings (the checkpoint's) and normalised as
the model was trained: per utterance by the front end; with the training split's statistics for
``normalize='dataset'``; or, for ``normalize='speaker'``, with the statistics of its voice's own
recordings (a voice is one group of paths, e.g. one command-line argument, as
``python -m speechrnn.predict`` takes them). The recordings have no labels: their stored target is
:data:`UNLABELLED` until a pseudo-label replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechrnn.audio_io import audio_files
from speechrnn.data.audio_base import extract_features_batch, extract_waveform
from speechrnn.data.base import PadCollate, SequenceDataModuleBase
from speechrnn.data.records import Record
from speechrnn.data.storage.feature_cache import ConcatenatedFeatureStore, FeatureStore
from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings, MFCCFrontend
from speechrnn.normalization import FrameMoments, Normalization, standardize

UNLABELLED = -1
"""Stored target of a recording that has no label (never a class index)."""


def voices_of_arguments(items: Sequence[str | os.PathLike]) -> dict[str, list[Path]]:
    """One voice per argument (a folder of one speaker's recordings, or a file), named by the
    argument as given, in order. A file reached twice is refused, naming both arguments."""
    voices: dict[str, list[Path]] = {}
    owner: dict[Path, str] = {}
    for item in items:
        name = os.fspath(item)
        if name in voices:
            raise UserInputError(f"{name}: given more than once")
        voices[name] = audio_files(item)
        for path in voices[name]:
            key = path.resolve()
            if key in owner:
                raise UserInputError(f"{path}: reached from both {owner[key]} and {name}; give each recording once")
            owner[key] = name
    return voices


class ChainedFeatureStore(FeatureStore):
    """Two stores as one: ``first``'s sequences, then ``second``'s (indices continue after ``first``)."""

    def __init__(self, first: FeatureStore, second: FeatureStore) -> None:
        if first.feature_dim != second.feature_dim:
            raise ValueError(f"feature sizes differ: {first.feature_dim} and {second.feature_dim}")
        self.first, self.second = first, second
        self.offset = len(first)
        self._lengths = np.concatenate([first.lengths, second.lengths]).astype(np.int64)

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def feature_dim(self) -> int:
        return self.first.feature_dim

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if index < 0 or index >= len(self._lengths):
            raise IndexError(index)
        return self.first[index] if index < self.offset else self.second[index - self.offset]


class RecordingsDataModule(SequenceDataModuleBase):
    """The run's DataModule ``base`` plus unlabelled recordings, grouped by voice.

    Splits: ``train`` and ``val`` are ``base``'s (same indices), ``test`` is the recordings, stored
    after ``base``'s sequences. :meth:`setup` sets ``base`` up and reads every recording; a bad
    file raises its :class:`AudioError` naming it. ``class_names``, feature settings and
    normalisation are ``base``'s; for a model normalised per speaker, each voice gets the
    statistics of its own recordings, under its name (the checkpoints written from this DataModule
    carry them, so ``Predictor.known_speaker(name)`` finds them).
    """

    def __init__(self, base: SequenceDataModuleBase, voices: Mapping[str, Sequence[str | os.PathLike]]) -> None:
        super().__init__(**base.common_options())
        if not voices or not any(voices.values()):
            raise UserInputError("no recordings to adapt to")
        self.base = base
        self.voices = {name: [Path(p) for p in paths] for name, paths in voices.items()}
        self.voice_names: dict[str, str] = {}
        """Argument name -> the speaker name its recordings are stored under (the same unless it is
        also a speaker of the corpus)."""
        self._frontend_module: MFCCFrontend | None = None

    @property
    def feature_dim(self) -> int:
        return self.base.feature_dim

    @property
    def feature_settings(self) -> FeatureSettings | None:
        return self.base.feature_settings

    @property
    def task(self) -> str:
        return self.base.task

    @property
    def class_names(self) -> list[str]:
        return self.base.class_names

    @property
    def normalization(self) -> Normalization:
        return self.base.normalization

    @property
    def on_device_features(self) -> bool:
        """Whether the wrapped store holds waveforms (features computed per batch)."""
        return bool(getattr(self.base, "on_device_features", False))

    @property
    def base_count(self) -> int:
        """Number of ``base``'s stored sequences; recordings are stored from this index on."""
        assert self.base.store is not None
        return len(self.base.store)

    def load_records(self) -> list[Record]:
        records = list(self.base.records)
        for name, paths in self.voices.items():
            speaker = self.voice_names.get(name, name)
            records.extend(Record(str(path.resolve()), "", speaker, "test") for path in paths)
        return records

    def build_store(self, records: list[Record]) -> tuple[FeatureStore, list[int]]:
        raise NotImplementedError("RecordingsDataModule builds its store in setup()")

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        self.base.setup(stage)
        settings = self.base.feature_settings
        if settings is None:
            raise ConfigError(
                f"{type(self.base).__name__} holds feature sequences, not audio: recordings cannot be featurised for it"
            )
        if self.base.task != "classification":
            raise ConfigError(f"adapting to recordings needs whole-sequence classification, not {self.base.task}")
        known = set(self.base.speaker_statistics) | {
            self.base.record_of(i).speaker for i in range(len(self.base.store_records))
        }
        self.voice_names = {name: f"{name} (new recordings)" if name in known else name for name in self.voices}
        self._records = None
        records = self.records
        own = records[len(self.base.records) :]
        paths = [record.source for record in own]
        limit = getattr(self.base, "clip_limit", None)
        features = extract_features_batch(paths, settings, limit=limit)
        stored = [extract_waveform(path, settings, limit) for path in paths] if self.on_device_features else features
        self.store = ChainedFeatureStore(self.base.store, ConcatenatedFeatureStore.from_arrays(stored))
        first = len(self.base.records)
        self.store_records = [*self.base.store_records, *range(first, first + len(own))]
        recordings = np.arange(self.base_count, len(self.store), dtype=np.int64)
        self.splits = {"train": self.base.splits["train"], "val": self.base.splits["val"], "test": recordings}
        self.validation = self.base.validation
        self.feature_mean, self.feature_std = self.base.feature_mean, self.base.feature_std
        if self.normalization == "speaker":
            statistics = dict(self.base.speaker_statistics)
            speakers = [record.speaker for record in own]
            names = sorted(set(speakers))  # type: ignore[type-var]
            moments = FrameMoments(len(names), settings.feature_dim)
            for array, speaker in zip(features, speakers, strict=True):
                moments.add_sequence(array, names.index(speaker))
            mean, std = moments.result()
            statistics.update({name: (mean[i], std[i]) for i, name in enumerate(names)})
            every = [self.record_of(i).speaker for i in range(len(self.store_records))]
            self.use_speaker_statistics(statistics, every)

    def voice_indices(self) -> dict[str, np.ndarray]:
        """Stored indices of each voice's recordings, by argument name, in the order given."""
        start, result = self.base_count, {}
        for name, paths in self.voices.items():
            result[name] = np.arange(start, start + len(paths), dtype=np.int64)
            start += len(paths)
        return result

    def targets(self) -> np.ndarray:
        """``base``'s targets, then :data:`UNLABELLED` for every recording."""
        own = len(self.store_records) - len(self.base.store_records)
        return np.concatenate([self.base.targets(), np.full(own, UNLABELLED, dtype=np.int64)])

    def collate(self) -> PadCollate:
        if self.on_device_features:
            return PadCollate()  # waveforms: statistics apply after the front end, in featurize
        return super().collate()

    def featurize(self, batch: Any, training: bool = False) -> Any:
        """``base``'s featurisation; on a waveform store, the recordings' rows of a batch get the
        front end and their own statistics here (``base`` only knows its own sequences), with
        ``base``'s feature-level augmentation (SpecAugment) when ``training``."""
        if not self.on_device_features:
            return self.base.featurize(batch, training)
        waveforms, lengths, targets, indices = batch
        own = indices.cpu() >= self.base_count
        if not bool(own.any()):
            return self.base.featurize(batch, training)
        parts = []
        if not bool(own.all()):
            parts.append((~own, self.base.featurize(self._rows(batch, ~own), training)))
        parts.append((own, self._featurize_recordings(self._rows(batch, own), training)))
        return self._merge(parts, len(own))

    @staticmethod
    def _rows(batch: tuple[torch.Tensor, ...], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        waveforms, lengths, targets, indices = batch
        keep = lengths.cpu()[mask]
        return (
            waveforms[mask.to(waveforms.device)][:, : int(keep.max())],
            keep,
            targets[mask.to(targets.device)],
            indices[mask.to(indices.device)],
        )

    def _featurize_recordings(self, batch: tuple[torch.Tensor, ...], training: bool) -> tuple[torch.Tensor, ...]:
        audio, lengths, targets, indices = batch
        if self._frontend_module is None:
            assert self.feature_settings is not None
            self._frontend_module = MFCCFrontend(self.feature_settings).eval()
        frontend = self._frontend_module.to(audio.device)
        features, lengths = frontend(audio[..., 0], lengths.cpu())
        statistics = self.batch_statistics(indices, features.device)
        if statistics is not None:
            features = standardize(features, lengths, *statistics)
        augment = getattr(self.base, "augment", None)
        if training and augment is not None and augment.enabled:
            features, lengths = self.base.augmenter.to(features.device).features(features, lengths, shift=True)
        return features, lengths, targets, indices

    @staticmethod
    def _merge(parts: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]], size: int) -> tuple[torch.Tensor, ...]:
        width = max(int(part[0].shape[1]) for _, part in parts)
        first = parts[0][1]
        features = first[0].new_zeros((size, width, first[0].shape[2]))
        lengths = torch.zeros(size, dtype=torch.int64)
        targets = first[2].new_zeros((size, *first[2].shape[1:]))
        indices = first[3].new_zeros(size)
        for mask, (part_features, part_lengths, part_targets, part_indices) in parts:
            rows = mask.nonzero().flatten()
            features[rows.to(features.device), : part_features.shape[1]] = part_features
            lengths[rows] = part_lengths.cpu()
            targets[rows.to(targets.device)] = part_targets
            indices[rows.to(indices.device)] = part_indices
        return features, lengths, targets, indices

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        return self.featurize(batch, trainer is not None and trainer.training)
