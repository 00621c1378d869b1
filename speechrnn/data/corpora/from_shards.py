"""``ShardedDataModule``: train from LitData shards in a local folder or a bucket, on any number of
machines, without the audio (``speechrnn build-cache --format litdata`` writes them)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from speechrnn.data.base import CACHE_DIR, PadCollate, SequenceDataModuleBase
from speechrnn.data.records import Record
from speechrnn.data.splits import SPLITS, Split
from speechrnn.data.storage.shards import ShardFeatureStore, ShardIndex, ShardRecords, open_split
from speechrnn.data.storage.stream_batches import StreamBatches
from speechrnn.errors import ConfigError, UserInputError
from speechrnn.features import FeatureSettings
from speechrnn.normalization import Normalization, normalization_of


class ShardedDataModule(SequenceDataModuleBase):
    """Feature sequences streamed from LitData shards in a local folder or a bucket.

    The splits, features, targets and normalisation statistics are those of the DataModule the shards
    were built from, read from ``path`` alone.

    Training reads LitData's shuffled stream, each process its own chunks, and batches it like the
    memory-mapped path (:mod:`speechrnn.data.storage.stream_batches`: length-sorted windows of
    ``batch_size x 100`` clips, the same ``max_frames`` rule); evaluation reads every clip once across
    processes. The position in the training epoch is saved in checkpoints, so a run resumed from one
    continues the epoch where it stopped. With ``max_frames`` the number of batches per epoch is
    known only as the stream is read, so training needs ``--trainer.max_steps``.
    """

    def __init__(
        self,
        path: str,
        cache_dir: str | None = CACHE_DIR,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            path: Shard folder or bucket URL (``s3://bucket/corpus``, ``gs://...``, ``r2://...``);
                credentials and endpoints come from the usual environment (e.g. ``AWS_*``).
            cache_dir: Local folder for the chunks downloaded from a bucket (beside the feature
                caches; LitData keeps each bucket in its own subfolder); None: LitData's default.
                Unused for a local folder, which is read in place.
            storage_options: Extra options for the bucket's client (LitData's ``storage_options``).
            **kwargs: Batching options of :class:`~speechrnn.data.base.SequenceDataModuleBase` (the
                splits were fixed when the shards were built).
        """
        super().__init__(val_fraction=0.0, test_fraction=0.0, **kwargs)
        if not str(path).strip():
            raise ConfigError("ShardedDataModule: path must name a shard folder or bucket URL")
        self.path = str(path)
        self.cache_dir = cache_dir
        self.storage_options = storage_options
        self._train_stream: StreamBatches | None = None
        self._stream_state: dict[str, Any] | None = None

    @cached_property
    def index(self) -> ShardIndex:
        """The shard folder's ``index.json`` (read on first use)."""
        return ShardIndex.read(self.path, self.storage_options)

    @cached_property
    def shard_records(self) -> ShardRecords:
        """Sources, speakers, targets and lengths of every clip (read only for reports)."""
        return ShardRecords.read(self.index, self.storage_options)

    @property
    def feature_dim(self) -> int:
        return self.index.feature_dim

    @property
    def class_names(self) -> list[str]:
        return list(self.index.class_names)

    @property
    def task(self) -> str:
        return self.index.task

    @property
    def feature_settings(self) -> FeatureSettings | None:
        settings = self.index.data_config.get("features")
        return None if settings is None else FeatureSettings.from_dict(settings)

    @property
    def normalization(self) -> Normalization:
        """That of the DataModule the shards were built from (its statistics come with them)."""
        return normalization_of(self.index.data_config)

    def clip_seconds(self) -> dict[str, float] | None:
        """That of the DataModule the shards were built from."""
        return self.index.data_config.get("clip_seconds")

    def load_records(self) -> list[Record]:
        return [self.record_of(i) for i in range(sum(self.index.counts.values()))]

    def build_store(self, records: list[Record]) -> tuple[ShardFeatureStore, list[int]]:
        return ShardFeatureStore(self.index, self.cache_dir, self.storage_options), list(range(len(records)))

    def setup(self, stage: str | None = None) -> None:
        """Splits, statistics and what validation measures, from the index alone (no clip is read)."""
        trainer = getattr(self, "trainer", None)
        if stage == "fit" and self.max_frames is not None and self.bucketing and trainer is not None:
            if trainer.max_steps == -1:
                raise ConfigError(
                    "ShardedDataModule: with --data.max_frames the batches per epoch are counted only as the "
                    "stream is read; give --trainer.max_steps (the learning-rate schedule spans it)"
                )
        if self.store is not None:
            return
        index = self.index
        for split in self.required_splits:
            if index.counts[split] == 0:
                raise UserInputError(f"ShardedDataModule: {self.path} has no {split} split{self._split_hint(split)}")
        self.store = ShardFeatureStore(index, self.cache_dir, self.storage_options)
        self.splits = {
            split: np.arange(index.offset(split), index.offset(split) + index.counts[split]) for split in SPLITS
        }
        config = index.data_config
        self.validation = config.get("validation", "")
        if config.get("feature_mean") is not None:
            self.feature_mean = np.asarray(config["feature_mean"], np.float32)
            self.feature_std = np.asarray(config["feature_std"], np.float32)
        if config.get("speaker_statistics"):
            statistics = {
                name: (np.asarray(entry["mean"], np.float32), np.asarray(entry["std"], np.float32))
                for name, entry in config["speaker_statistics"].items()
            }
            self.use_speaker_statistics(statistics, list(self.shard_records.speakers))

    def _split_hint(self, split: str) -> str:
        return "" if split == "train" else " (python -m speechrnn.fit validates on val and tests on test)"

    def targets(self) -> np.ndarray:
        return self.shard_records.targets

    def record_of(self, index: int) -> Record:
        records = self.shard_records
        split = next(s for s in SPLITS if index < self.index.offset(s) + self.index.counts[s])
        label = self.class_names[records.targets[index]] if self.task == "classification" else "value"
        return Record(records.sources[index], label, records.speakers[index], split)

    def dataloader(
        self, split: Split, shuffle: bool | None = None, collate: PadCollate | None = None, shard: bool = True
    ) -> StreamBatches | DataLoader:
        """Batches of ``split`` streamed by LitData (training order shuffled, evaluation in storage
        order). ``shard=False`` (one process reading the whole split, e.g. for reports) and
        ``shuffle`` other than the split's own read clips one by one instead, as the base class does."""
        if self.store is None:
            raise RuntimeError("ShardedDataModule.setup() must run before asking for data")
        if not shard or (shuffle is not None and shuffle != (split == "train")):
            return super().dataloader(split, shuffle, collate, shard=False)
        return StreamBatches(
            open_split(self.index, split, self.cache_dir, self.storage_options),
            count=self.index.counts[split],
            collate=collate or self.collate(),
            batch_size=self.batch_size,
            max_frames=self.max_frames,
            window=self.batch_size * (self.bucket_size_multiplier if self.bucketing else 1),
            bucketing=self.bucketing,
            training=split == "train",
            seed=self.seed,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> StreamBatches | DataLoader:
        """The training stream; its position is saved with the DataModule's state in checkpoints
        (Lightning's own saving of loader states is skipped when the model asks for
        ``estimated_stepping_batches``, Lightning issue 20550) and counts the batches the trainer
        finished, not the one it fetched ahead."""
        loader = self.dataloader("train")
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            loader.batches_done = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if self._stream_state is not None:
            loader.load_state_dict(self._stream_state)
            self._stream_state = None  # once: a reloaded loader starts a new epoch
        self._train_stream = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._train_stream is not None:
            state["train_stream"] = self._train_stream.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._stream_state = state_dict.get("train_stream")
