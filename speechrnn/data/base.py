"""What every speechrnn DataModule shares: the examples, their splits (the policy is
:mod:`speechrnn.data.splits`), normalisation statistics (the maths is :mod:`speechrnn.normalization`)
and variable-length batching.

Batch structure (all DataModules): ``(features, lengths, labels, indices)`` with
``features: (batch, time, features) float32`` zero-padded after each sequence's end,
``lengths: (batch,) int64`` on the CPU (packing needs them there, also under mixed precision),
``labels: (batch,) int64`` class indices into ``class_names`` (float32 targets for regression),
``indices: (batch,) int64`` positions in :attr:`SequenceDataModuleBase.records`, to trace a
prediction back to its file and speaker.
"""

from __future__ import annotations

import inspect
import warnings
from abc import abstractmethod
from collections import Counter
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from speechrnn.data.records import Record
from speechrnn.data.splits import (
    SPLITS,
    Split,
    assign_splits,
    check_fractions,
    check_planned_splits,
    check_stored_splits,
    describe_validation,
    fraction_hint,
    require_trained_classes,
)
from speechrnn.data.storage.bucketing import BucketBatchSampler
from speechrnn.data.storage.feature_cache import FeatureStore
from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings
from speechrnn.normalization import FrameMoments, Normalization, standardize
from speechrnn.padding import PADDED_CLASS

CACHE_DIR = "data/cache"
"""Where feature caches (and chunks downloaded from a bucket) go unless ``cache_dir`` says otherwise."""
STATISTICS_CHUNK = 1024
"""Stored sequences read per pass when measuring normalisation statistics (bounds the memory of a pass)."""


class SequenceDataset(Dataset):
    """Items ``(features (T, F), target, index)`` of a store, restricted to ``indices``."""

    def __init__(self, store: FeatureStore, indices: np.ndarray, targets: np.ndarray) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[np.ndarray, Any, int]:
        index = int(self.indices[position])
        return self.store[index], self.targets[index], index

    @property
    def lengths(self) -> np.ndarray:
        return self.store.lengths[self.indices]


def pad_targets(targets: list[Any], width: int) -> torch.Tensor:
    """One target per sequence ``(B,)``, or per-step targets ``(T_i,)``/``(T_i, D)`` padded to
    ``(B, width[, D])``: with :data:`PADDED_CLASS` for class indices, zeros for values."""
    if np.ndim(targets[0]) == 0:
        return torch.as_tensor(np.array(targets))
    first = np.asarray(targets[0])
    fill = PADDED_CLASS if np.issubdtype(first.dtype, np.integer) else 0
    padded = np.full((len(targets), width, *first.shape[1:]), fill, dtype=first.dtype)
    for row, target in enumerate(targets):
        padded[row, : len(target)] = target
    return torch.from_numpy(padded)


class PadCollate:
    """Pad a list of items into the documented batch, applying normalisation statistics when given:
    ``(F,)`` for every item (dataset statistics) or, with ``by_index``, ``(N, F)`` rows picked by
    each item's index (its speaker's statistics)."""

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None, by_index: bool = False) -> None:
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.by_index = by_index

    def __call__(self, items: list[tuple[np.ndarray, Any, int]]) -> tuple[torch.Tensor, ...]:
        lengths = torch.tensor([len(item[0]) for item in items], dtype=torch.int64)
        padded = np.zeros((len(items), int(lengths.max()), items[0][0].shape[1]), np.float32)
        for row, (array, _, _) in enumerate(items):
            padded[row, : len(array)] = array
        features = torch.from_numpy(padded)
        indices = torch.tensor([item[2] for item in items], dtype=torch.int64)
        if self.mean is not None:
            mean, std = (self.mean[indices, None], self.std[indices, None]) if self.by_index else (self.mean, self.std)
            features = standardize(features, lengths, mean, std)
        targets = pad_targets([item[1] for item in items], int(lengths.max()))
        return features, lengths, targets, indices


class SequenceDataModuleBase(pl.LightningDataModule):
    """Splitting, statistics and variable-length batching shared by every speechrnn DataModule.

    Subclasses say where examples come from (:meth:`load_records`) and how they become features
    (:meth:`build_store`); everything else, from honest splits to bucketed batches, lives here.
    """

    def __init__(
        self,
        batch_size: int = 32,
        max_frames: int | None = None,
        bucketing: bool = True,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        """
        Args:
            batch_size: Sequences per batch (an upper bound when ``max_frames`` is set).
            max_frames: Optional budget of padded frames per batch (batch size x longest length),
                so batches of short clips hold more of them.
            bucketing: Batch sequences of similar length together (less padding, faster RNNs).
            num_workers: DataLoader worker processes; 0 reads in the main process, which is
                fastest for the memory-mapped cache on small machines.
            val_fraction: Fraction of speakers (or of each class's examples, when speakers are
                unknown) held out for validation when the data has no split of its own.
            test_fraction: Likewise for the test split.
            seed: Seed of the split and of the batch order.
        """
        super().__init__()
        check_fractions(val_fraction, test_fraction)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1 (or None for no frame budget), got {max_frames}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.bucketing = bucketing
        self.bucket_size_multiplier = 100  # batches per length-sorting window (BucketBatchSampler)
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self._records: list[Record] | None = None
        self.store: FeatureStore | None = None
        self.store_records: list[int] = []
        self.splits: dict[str, np.ndarray] = {}
        self.feature_mean: np.ndarray | None = None
        self.feature_std: np.ndarray | None = None
        self.speaker_statistics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """Per-speaker feature mean and deviation when :attr:`normalization` is ``speaker``."""
        self._item_statistics: tuple[np.ndarray, np.ndarray] | None = None
        self.speaker_groups: np.ndarray | None = None
        """Position in ``sorted(speaker_statistics)`` of each stored sequence's speaker."""
        self.validation = ""
        """What validation measures (:func:`~speechrnn.data.splits.describe_validation`), set by :meth:`setup`."""
        self.required_splits: tuple[Split, ...] = ("train",)
        """Splits that must hold data; ``python -m speechrnn.fit`` needs all three (it validates on
        ``val`` and tests the best checkpoint on ``test``), and says so before any work."""
        self._pseudo_labels: tuple[np.ndarray, np.ndarray] | None = None

    # --- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def load_records(self) -> list[Record]:
        """Every example of the corpus, in a deterministic order."""

    @abstractmethod
    def build_store(self, records: list[Record]) -> tuple[FeatureStore, list[int]]:
        """Features of ``records``; returns the store and, per stored sequence, its record position
        (records that were skipped as bad input are absent)."""

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Size of each feature frame (the model's ``input_size``)."""

    @property
    def feature_settings(self) -> FeatureSettings | None:
        """Audio feature settings, or None for data that is already a feature sequence."""
        return None

    @property
    def task(self) -> str:
        """``classification`` or ``regression`` of whole sequences, or ``frame_classification`` /
        ``frame_regression`` (a target per time step); the model's task follows it."""
        return "classification"

    @property
    def normalization(self) -> Normalization:
        """How batches are normalised (:mod:`speechrnn.normalization`): ``utterance`` (each clip, by
        the front end), ``speaker``, ``dataset`` (training-split statistics) or ``none``. The feature
        settings' ``normalize`` here; subclasses without audio settings say their own."""
        settings = self.feature_settings
        return "none" if settings is None else settings.normalize

    # --- derived ------------------------------------------------------------------------------
    def complete_records(self, records: list[Record]) -> list[Record]:
        """The examples the model learns from, given the corpus's own (:meth:`load_records`): the same
        here; audio corpora add open-set classes (:meth:`AudioDataModule.complete_records
        <speechrnn.data.audio_base.AudioDataModule.complete_records>`)."""
        return records

    @property
    def records(self) -> list[Record]:
        """Every example, as the model sees it (:meth:`complete_records` of :meth:`load_records`), read once."""
        if self._records is None:
            records = self.complete_records(self.load_records())
            if not records:
                raise UserInputError(f"{type(self).__name__}: the corpus has no examples")
            repeated = [source for source, count in Counter(r.source for r in records).items() if count > 1]
            if repeated:
                raise UserInputError(
                    f"{type(self).__name__}: {len(repeated)} example(s) listed more than once, "
                    f"e.g. {repeated[:3]}; each file must appear once"
                )
            self._records = records
        return self._records

    @property
    def label_names(self) -> list[str]:
        """Names of the records' labels, in class-index order."""
        return sorted({r.label for r in self.records})

    @property
    def class_names(self) -> list[str]:
        """The model's output classes, in index order: the labels, unless the task says otherwise."""
        return self.label_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_config(self) -> dict[str, Any]:
        """Everything inference needs to turn input into a model batch the way training did."""
        settings = self.feature_settings
        return {
            "class_names": self.class_names,
            "features": settings.to_dict() if settings is not None else None,
            "feature_mean": None if self.feature_mean is None else self.feature_mean.tolist(),
            "feature_std": None if self.feature_std is None else self.feature_std.tolist(),
            "speaker_statistics": {
                speaker: {"mean": mean.tolist(), "std": std.tolist()}
                for speaker, (mean, std) in sorted(self.speaker_statistics.items())
            }
            or None,
            "validation": self.validation,
            "clip_seconds": self.clip_seconds(),
        }

    def clip_seconds(self) -> dict[str, float] | None:
        """Median and longest training clip in seconds (``{"median": s, "max": s}``), for inference on
        longer audio (``speechrnn spot`` classifies windows of the length the model was trained on);
        None for data that is not audio or before :meth:`setup`."""
        return None

    def common_options(self) -> dict[str, Any]:
        """This DataModule's options of :class:`SequenceDataModuleBase` (batching, split fractions,
        seed) by name, to build another DataModule that batches and splits the same way."""
        names = inspect.signature(SequenceDataModuleBase.__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def record_splits(self, records: list[Record]) -> list[str]:
        """The split of each record (from the data, or assigned with ``seed``)."""
        return assign_splits(
            records, self.val_fraction, self.test_fraction, self.seed, stratify=self.task == "classification"
        )

    def check_plan(self, records: list[Record] | None = None) -> list[str]:
        """Check, from the list of examples alone (no audio read), that the run can work: at least
        two classes, every class in training, data in each of :attr:`required_splits`, and every
        speaker known when normalising per speaker. Returns the split of each record."""
        records = self.records if records is None else records
        name = type(self).__name__
        if self.normalization == "speaker":
            unknown = [r.source for r in records if not r.speaker]
            if unknown:
                raise UserInputError(
                    f"{name}: features.normalize='speaker' needs every example's speaker; {len(unknown)} have "
                    f"none, e.g. {unknown[0]}"
                )
        splits = self.record_splits(records)
        classification = self.task == "classification"
        check_planned_splits(name, records, splits, self.required_splits, classification, self._split_hint)
        return splits

    def _split_hint(self, split: str) -> str:
        """What to change when ``split`` would be empty (:func:`~speechrnn.data.splits.fraction_hint`)."""
        return fraction_hint(split, getattr(self, f"{split}_fraction", None))

    # --- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        records = self.records
        record_splits = self.check_plan(records)
        self.store, self.store_records = self.build_store(records)
        stored_splits = np.array([record_splits[p] for p in self.store_records])
        self.splits = {name: np.flatnonzero(stored_splits == name) for name in SPLITS}
        self._check_splits()
        self.validation, shared = describe_validation(self._speakers("train"), self._speakers("val"))
        if shared:
            warnings.warn(f"{type(self).__name__}: validation {self.validation}", stacklevel=2)
        normalization = self.normalization
        if normalization == "dataset":
            mean, std = self.group_statistics(self.splits["train"], np.zeros(len(self.splits["train"]), np.int64))
            self.feature_mean, self.feature_std = mean[0], std[0]
        elif normalization == "speaker":
            self._set_speaker_statistics()

    def _set_speaker_statistics(self) -> None:
        """Statistics of every speaker over all of its clips, whatever their split: a held-out
        voice is normalised with its own unlabelled recordings, as it will be in use."""
        speakers = [self.record_of(index).speaker for index in range(len(self.store_records))]
        names = sorted(set(speakers))
        position = {name: i for i, name in enumerate(names)}
        mean, std = self.group_statistics(np.arange(len(speakers)), np.array([position[s] for s in speakers]))
        self.use_speaker_statistics({name: (mean[i], std[i]) for i, name in enumerate(names)}, speakers)

    def use_speaker_statistics(
        self, statistics: dict[str, tuple[np.ndarray, np.ndarray]], speakers: list[str | None]
    ) -> None:
        """Normalise every stored sequence with its speaker's ``statistics`` (``speakers``: the
        speaker of each, in store order)."""
        names = sorted(statistics)
        missing = sorted({s for s in speakers if s not in statistics}, key=str)
        if missing:
            raise UserInputError(f"{type(self).__name__}: no speaker statistics for {missing[:3]}")
        position = {name: i for i, name in enumerate(names)}
        group = np.array([position[s] for s in speakers], np.int64)  # type: ignore[index]
        mean = np.stack([statistics[n][0] for n in names]).astype(np.float32)
        std = np.stack([statistics[n][1] for n in names]).astype(np.float32)
        self.speaker_statistics = {name: (mean[i], std[i]) for i, name in enumerate(names)}
        self._item_statistics = (mean[group], std[group])
        self.speaker_groups = group

    def _speakers(self, split: str) -> set[str | None]:
        """Speakers of the stored sequences of ``split`` (None for an unknown one)."""
        return {self.record_of(i).speaker for i in self.splits[split]}

    def _check_splits(self) -> None:
        """After the store is built: every needed split still has data and, for classification of
        whole sequences, every class is known and has training examples."""
        name = type(self).__name__
        check_stored_splits(name, self.splits, self.required_splits)
        if self.task != "classification":
            return
        unknown = sorted({r.label for r in self.records} - set(self.class_names))
        if unknown:
            raise ValueError(f"{name}: labels not among the classes {self.class_names}: {unknown}")
        require_trained_classes(name, self.class_names, (self.record_of(i).label for i in self.splits["train"]))

    def group_statistics(self, indices: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and deviation ``(G, F)`` float32 over the frames of the stored sequences
        ``indices``, pooled by ``groups`` (a group number in ``[0, G)`` for each)."""
        moments = FrameMoments(int(groups.max()) + 1 if len(groups) else 1, self.feature_dim)
        assert self.store is not None
        for start in range(0, len(indices), STATISTICS_CHUNK):
            part = slice(start, start + STATISTICS_CHUNK)
            sequences = [np.asarray(self.store[int(i)], np.float32) for i in indices[part]]
            owners = np.repeat(np.asarray(groups[part], np.int64), [len(s) for s in sequences])
            moments.add_frames(torch.from_numpy(np.concatenate(sequences)), torch.from_numpy(owners))
        return moments.result()

    def batch_statistics(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Normalisation statistics of a batch whose features are not normalised yet: ``(F,)``
        dataset statistics, ``(B, 1, F)`` of each clip's speaker, or None."""
        if self._item_statistics is not None:
            rows = indices.cpu().numpy()
            mean, std = (torch.as_tensor(s[rows][:, None], device=device) for s in self._item_statistics)
            return mean, std
        if self.feature_mean is not None:
            return torch.as_tensor(self.feature_mean, device=device), torch.as_tensor(self.feature_std, device=device)
        return None

    def targets(self) -> np.ndarray:
        """Target of each stored sequence (class indices)."""
        index_of = {name: i for i, name in enumerate(self.class_names)}
        return np.array([index_of[self.records[p].label] for p in self.store_records], dtype=np.int64)

    def dataset(self, split: Split) -> SequenceDataset:
        if self.store is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for data")
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if split != "train" and len(self.splits[split]) == 0:
            raise ValueError(f"{type(self).__name__}: the {split} split has no data")
        if not hasattr(self, "_targets"):
            self._targets = self.targets()
        if split == "train" and self._pseudo_labels is not None:
            indices, labels = self._pseudo_labels
            targets = self._targets.copy()
            targets[indices] = labels
            return SequenceDataset(self.store, np.concatenate([self.splits["train"], indices]), targets)
        return SequenceDataset(self.store, self.splits[split], self._targets)

    def pseudo_label(self, indices: np.ndarray | None, labels: np.ndarray | None = None) -> None:
        """Train on the stored sequences ``indices`` as well, with ``labels`` (class indices) in place
        of their own: self-training on unlabelled data such as a new voice's recordings
        (:mod:`speechrnn.adapt`). Evaluation keeps the true targets; ``None`` restores the labelled
        training split."""
        if indices is None:
            self._pseudo_labels = None
            return
        indices, labels = np.asarray(indices, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        if indices.shape != labels.shape or indices.ndim != 1:
            raise ValueError(f"pseudo_label needs one label per index, got {indices.shape} and {labels.shape}")
        if len(np.intersect1d(indices, self.splits["train"])):
            raise ValueError("pseudo_label: some indices are training sequences, which have labels")
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(self.class_names):
            raise ValueError(f"pseudo_label: labels must be class indices below {len(self.class_names)}")
        self._pseudo_labels = (indices, labels)

    def record_of(self, index: int) -> Record:
        """The record behind a batch's ``indices`` entry."""
        return self.records[self.store_records[index]]

    def featurize(self, batch: Any, training: bool = False) -> Any:
        """The model's batch from a DataLoader batch already on its device (Lightning does this in
        ``on_after_batch_transfer``; call it yourself when iterating a DataLoader by hand)."""
        return batch

    def collate(self) -> PadCollate:
        """The batch builder (applies training-split or speaker statistics when normalising with them)."""
        if self._item_statistics is not None:
            return PadCollate(*self._item_statistics, by_index=True)
        return PadCollate(self.feature_mean, self.feature_std)

    def dataloader(
        self, split: Split, shuffle: bool | None = None, collate: PadCollate | None = None, shard: bool = True
    ) -> DataLoader:
        """Bucketed, padded batches of ``split``; sharded across processes under DDP when ``shard``."""
        dataset = self.dataset(split)
        shuffle = split == "train" if shuffle is None else shuffle
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None and shard else (1, 0)
        return self._loader(dataset, shuffle, collate, replicas, rank, even_shards=split == "train")

    def subset_dataloader(self, indices: np.ndarray, collate: PadCollate | None = None) -> DataLoader:
        """Batches of the stored sequences ``indices`` (e.g. one voice's clips, whatever their split),
        bucketed and padded as evaluation batches are, in a fixed order, in this process alone."""
        if self.store is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for data")
        if not hasattr(self, "_targets"):
            self._targets = self.targets()
        dataset = SequenceDataset(self.store, np.asarray(indices, dtype=np.int64), self._targets)
        return self._loader(dataset, False, collate)

    def _loader(
        self,
        dataset: SequenceDataset,
        shuffle: bool,
        collate: PadCollate | None,
        replicas: int = 1,
        rank: int = 0,
        even_shards: bool = True,
    ) -> DataLoader:
        """``dataset`` in bucketed batches (:class:`BucketBatchSampler` with this DataModule's batching
        options), padded by ``collate`` (default: :meth:`collate`); ``replicas`` and ``rank`` shard it."""
        sampler = BucketBatchSampler(
            dataset.lengths if self.bucketing else np.zeros(len(dataset), np.int64),
            batch_size=self.batch_size,
            max_frames=self.max_frames,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
            bucket_size_multiplier=self.bucket_size_multiplier if self.bucketing else 1,
            even_shards=even_shards,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate or self.collate(),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # keeps the global RNG to the model
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def state_dict(self) -> dict[str, Any]:
        return self.data_config

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("feature_mean") is not None:
            self.feature_mean = np.asarray(state_dict["feature_mean"], np.float32)
            self.feature_std = np.asarray(state_dict["feature_std"], np.float32)
