"""Sharded feature storage for corpora beyond one disk: LitData-optimised chunks in a local folder or
a bucket (``s3://``, ``gs://``, ``r2://``), written once from any DataModule's feature store.

A shard folder holds::

    train/ val/ test/   one LitData-optimised dataset per split (absent when the split is empty); items
                        {"features": (T, F) float32, "target", "length", "index", "speaker" and
                        "source" (UTF-8 bytes)}
    records.json        per clip, in index order: sources, speakers, targets, lengths (read for
                        per-speaker normalisation, evaluation reports and the FeatureStore view)
    index.json          what the corpus is: feature size, classes, task, the source DataModule's data
                        config (feature settings, training-split statistics, what validation measures)
                        and per-split counts; written last, so a folder without it is unfinished

``index`` is a clip's position in the whole corpus (splits in train, val, test order), the
``indices`` of batches. A local folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from speechrnn.data.splits import SPLITS
from speechrnn.data.storage.feature_cache import FeatureStore
from speechrnn.errors import ConfigError, MissingInputError, UserInputError
from speechrnn.io import atomic_directory

SHARD_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
RECORDS_FILE = "records.json"
STREAMING_INSTALL = 'pip install "speechrnn[streaming]"'
DEFAULT_CHUNK_BYTES = "64MB"


class StreamingDependencyError(UserInputError, ImportError):
    """LitData, which shards need, is not installed."""


def import_litdata() -> Any:
    """The ``litdata`` module, or an error saying how to install it (it is an optional extra)."""
    try:
        import litdata
    except ImportError as error:
        raise StreamingDependencyError(
            f"sharded (LitData) storage needs the litdata package, which is not installed: {STREAMING_INSTALL}"
        ) from error
    return litdata


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a bucket URL (``scheme://...``) rather than a local folder."""
    return "://" in str(location)


def join(location: str | os.PathLike, name: str) -> str:
    """``location/name`` for a local folder or a URL."""
    return f"{str(location).rstrip('/')}/{name}" if is_remote(location) else str(Path(location) / name)


def read_text(location: str, name: str, storage_options: dict[str, Any] | None = None) -> str:
    """The text of file ``name`` in a shard folder (local, or downloaded with LitData's client)."""
    path = join(location, name)
    if not is_remote(location):
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            raise MissingInputError(f"{path}: not found") from None
    fs = _remote_fs(location, storage_options)
    if not fs.exists(path):
        raise MissingInputError(f"{path}: not found")
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, name)
        fs.download_file(path, local)
        return Path(local).read_text()


def _remote_fs(location: str, storage_options: dict[str, Any] | None) -> Any:
    import_litdata()
    from litdata.streaming.fs_provider import _get_fs_provider  # LitData's client for s3://, gs://, r2://

    return _get_fs_provider(location, storage_options or {})


@dataclass(frozen=True)
class ShardIndex:
    """The ``index.json`` of a finished shard folder."""

    location: str
    feature_dim: int
    task: str
    class_names: list[str]
    data_config: dict[str, Any]
    counts: dict[str, int]
    """Clips per split (``train``, ``val``, ``test``)."""
    frames: dict[str, int]
    """Frames per split."""
    source: str
    """The DataModule the shards were built from."""

    @classmethod
    def read(cls, location: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> ShardIndex:
        """Read and check a shard folder's index; a folder without one is named as unfinished."""
        location = str(location)
        try:
            text = read_text(location, INDEX_FILE, storage_options)
        except MissingInputError:
            what = "a half-written or interrupted build" if _has_split_data(location, storage_options) else "empty"
            raise MissingInputError(
                f"{location}: not a finished shard folder (no {INDEX_FILE}; {what}); build it with "
                "speechrnn build-cache FIT_CONFIG --format litdata --output FOLDER_OR_URL"
            ) from None
        try:
            index = json.loads(text)
            if index.get("format") != SHARD_FORMAT_VERSION:
                raise UserInputError(
                    f"{join(location, INDEX_FILE)}: shard format {index.get('format')!r}, this speechrnn reads "
                    f"{SHARD_FORMAT_VERSION}; rebuild the shards"
                )
            return cls(
                location=location,
                feature_dim=int(index["feature_dim"]),
                task=str(index["task"]),
                class_names=list(index["class_names"]),
                data_config=dict(index["data_config"]),
                counts={split: int(index["splits"][split]["count"]) for split in SPLITS},
                frames={split: int(index["splits"][split]["frames"]) for split in SPLITS},
                source=str(index.get("source", "")),
            )
        except (ValueError, KeyError, TypeError) as error:
            if isinstance(error, UserInputError):
                raise
            raise UserInputError(f"{join(location, INDEX_FILE)}: not a speechrnn shard index ({error!r})") from None

    def offset(self, split: str) -> int:
        """Index of the split's first clip in the whole corpus."""
        return sum(self.counts[s] for s in SPLITS[: SPLITS.index(split)])

    def split_location(self, split: str) -> str:
        """The LitData dataset of ``split``."""
        return join(self.location, split)


def _has_split_data(location: str, storage_options: dict[str, Any] | None) -> bool:
    if not is_remote(location):
        return any((Path(location) / split).exists() for split in SPLITS)
    fs = _remote_fs(location, storage_options)
    return any(fs.exists(join(join(location, split), "index.json")) for split in SPLITS)  # LitData's own index


@dataclass(frozen=True)
class ShardRecords:
    """Per-clip metadata of a shard folder (``records.json``), in corpus index order."""

    sources: list[str]
    speakers: list[str | None]
    targets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def read(cls, index: ShardIndex, storage_options: dict[str, Any] | None = None) -> ShardRecords:
        records = json.loads(read_text(index.location, RECORDS_FILE, storage_options))
        dtype = np.int64 if index.task == "classification" else np.float32
        return cls(
            sources=records["sources"],
            speakers=[speaker or None for speaker in records["speakers"]],
            targets=np.asarray(records["targets"], dtype=dtype),
            lengths=np.asarray(records["lengths"], dtype=np.int64),
        )


def open_split(
    index: ShardIndex, split: str, cache_dir: str | None = None, storage_options: dict[str, Any] | None = None
) -> Any:
    """LitData's ``StreamingDataset`` over one split (remote chunks are downloaded into ``cache_dir``)."""
    litdata = import_litdata()
    if index.counts[split] == 0:
        raise UserInputError(f"{index.location}: the {split} split has no data")
    return litdata.StreamingDataset(index.split_location(split), cache_dir=cache_dir, storage_options=storage_options)


class ShardFeatureStore(FeatureStore):
    """The :class:`FeatureStore` view of a shard folder: every clip of every split by corpus index,
    read item by item through LitData (remote chunks are downloaded on first use and cached)."""

    def __init__(
        self, index: ShardIndex, cache_dir: str | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.index = index
        self.cache_dir = cache_dir
        self.storage_options = storage_options
        self._datasets: dict[str, Any] = {}

    @cached_property
    def records(self) -> ShardRecords:
        return ShardRecords.read(self.index, self.storage_options)

    @property
    def lengths(self) -> np.ndarray:
        return self.records.lengths

    @property
    def feature_dim(self) -> int:
        return self.index.feature_dim

    def __len__(self) -> int:
        return sum(self.index.counts.values())

    def __getitem__(self, index: int) -> np.ndarray:
        for split in SPLITS:
            position = index - self.index.offset(split)
            if 0 <= position < self.index.counts[split]:
                if split not in self._datasets:
                    self._datasets[split] = open_split(self.index, split, self.cache_dir, self.storage_options)
                return self._datasets[split][position]["features"]
        raise IndexError(f"{self.index.location}: clip {index} is not among the {len(self)} clips")


def write_shards(
    datamodule: Any,
    output: str | os.PathLike,
    chunk_bytes: str | int = DEFAULT_CHUNK_BYTES,
    storage_options: dict[str, Any] | None = None,
) -> ShardIndex:
    """Write a DataModule's corpus as LitData shards in ``output`` (a new local folder or a bucket URL).

    The features are the DataModule's own (its feature store, e.g. the memory-mapped cache, which
    ``prepare_data`` builds), with its splits, targets and data config (feature settings and
    training-split statistics), so training from the shards sees what training from the DataModule
    would. Sequence-level tasks only (one target per clip).
    """
    litdata = import_litdata()
    name = type(datamodule).__name__
    if getattr(datamodule, "on_device_features", False):
        raise ConfigError(f"{name}: shards hold features; build them with on_device_features false")
    if datamodule.task not in ("classification", "regression"):
        raise ConfigError(f"{name}: shards hold one target per clip; task {datamodule.task} is not supported")
    augment = getattr(datamodule, "augment", None)
    if augment is not None and augment.enabled:
        warnings.warn(f"{name}: shards hold plain features; training from them applies no augmentation", stacklevel=2)
    output = str(output)
    remote = is_remote(output)
    if remote and _remote_fs(output, storage_options).exists(join(output, INDEX_FILE)):
        raise ConfigError(f"{output}: already holds shards ({INDEX_FILE}); choose another --output")
    if not remote and Path(output).exists():
        raise ConfigError(f"{output}: already exists; remove it or choose another --output")
    datamodule.prepare_data()
    datamodule.setup("fit")
    store, targets = datamodule.store, datamodule.targets()
    order = np.concatenate([datamodule.splits[split] for split in SPLITS])
    records = [datamodule.record_of(int(i)) for i in order]
    data_config = datamodule.data_config
    index = {
        "format": SHARD_FORMAT_VERSION,
        "source": name,
        "feature_dim": int(store.feature_dim),
        "task": datamodule.task,
        "class_names": list(datamodule.class_names),
        "data_config": data_config,
        "splits": {},
    }
    table = {
        "sources": [r.source for r in records],
        "speakers": [r.speaker or "" for r in records],
        "targets": targets[order].tolist(),
        "lengths": store.lengths[order].tolist(),
    }

    def write(folder: str) -> None:
        offset = 0
        for split in SPLITS:
            positions = datamodule.splits[split]
            index["splits"][split] = {"count": len(positions), "frames": int(store.lengths[positions].sum())}
            if len(positions):
                item = _item_reader(store, targets, positions, records, offset)
                litdata.optimize(
                    fn=item, inputs=list(range(len(positions))), output_dir=join(folder, split),
                    chunk_bytes=chunk_bytes, num_workers=1, start_method="fork", reorder_files=False,
                    keep_data_ordered=True, verbose=False, storage_options=storage_options or {},
                )  # fmt: skip
            offset += len(positions)
        _write_text(folder, RECORDS_FILE, json.dumps(table), storage_options)
        _write_text(folder, INDEX_FILE, json.dumps(index, indent=2), storage_options)

    if remote:
        write(output)
    else:
        with atomic_directory(output) as folder:
            write(str(folder))
    return ShardIndex.read(output, storage_options)


def _item_reader(
    store: FeatureStore, targets: np.ndarray, positions: np.ndarray, records: list[Any], offset: int
) -> Callable[[int], dict[str, Any]]:
    """LitData's ``fn``: item ``i`` of a split, as stored in its chunks (runs in a forked worker)."""

    def item(i: int) -> dict[str, Any]:
        features = np.ascontiguousarray(store[int(positions[i])], dtype=np.float32)
        record = records[offset + i]
        return {
            "features": features,
            "target": targets[int(positions[i])],
            "length": len(features),
            "index": offset + i,
            "speaker": (record.speaker or "").encode(),  # bytes: LitData would read a str ending in .wav as audio
            "source": record.source.encode(),
        }

    return item


def _write_text(folder: str, name: str, text: str, storage_options: dict[str, Any] | None) -> None:
    if not is_remote(folder):
        Path(folder, name).write_text(text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        Path(local).write_text(text)
        _remote_fs(folder, storage_options).upload_file(local, join(folder, name))
