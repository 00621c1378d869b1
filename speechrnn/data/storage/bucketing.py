"""Length-bucketing batch sampler: batches of similar length, shuffled, seeded, shardable."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Group indices into batches of similar length so little compute is spent on padding.

    Each epoch, items are shuffled, sorted by length within windows of ``bucket_size_multiplier``
    batches (so neighbouring lengths still vary between epochs), each window is cut into batches of
    ``batch_size`` items or, with ``max_frames``, of at most that many padded frames
    (:func:`bucket_batches`, which the streaming loader applies to its windows too), and the
    batches are shuffled. Everything derives from ``seed`` and the epoch (:meth:`set_epoch`), and
    with ``num_replicas > 1`` each replica takes every ``num_replicas``-th batch (padded by
    repetition so replicas run the same number of steps, as DDP requires).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int = 32,
        max_frames: int | None = None,
        shuffle: bool = True,
        bucket_size_multiplier: int = 100,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        even_shards: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.bucket_size_multiplier = bucket_size_multiplier
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_shards = even_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return cut_batches(order, self.lengths, self.batch_size, self.max_frames, self.drop_last)
        rng = np.random.default_rng([self.seed, self.epoch])
        window = max(1, self.batch_size * self.bucket_size_multiplier)
        batches = bucket_batches(
            rng.permutation(len(self.lengths)), self.lengths, window, self.batch_size, self.max_frames, self.drop_last
        )
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        if self.num_replicas > 1:
            if self.even_shards:
                per_replica = -(-len(batches) // self.num_replicas)
                batches = (batches * self.num_replicas)[: per_replica * self.num_replicas]
            batches = batches[self.rank :: self.num_replicas]
        for batch in batches:
            yield batch.tolist()

    def __len__(self) -> int:
        count = len(self._batches()) if self.max_frames is not None else self._fixed_count()
        if self.even_shards:
            return -(-count // self.num_replicas)
        return len(range(self.rank, count, self.num_replicas))

    def _fixed_count(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def cut_batches(
    order: np.ndarray, lengths: np.ndarray, batch_size: int, max_frames: int | None = None, drop_last: bool = False
) -> list[np.ndarray]:
    """Cut ``order`` (indices into ``lengths``) into consecutive batches of at most ``batch_size``
    items and, with ``max_frames``, at most that many padded frames (batch size x longest length;
    an item longer than the budget makes a batch alone). ``drop_last`` drops a final batch of fewer
    than ``batch_size`` items when there is no frame budget."""
    if max_frames is None:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        return batches
    batches, start, longest = [], 0, 0
    for position, index in enumerate(order):
        longest_with = max(longest, int(lengths[index]))
        size = position - start + 1
        if size > 1 and (longest_with * size > max_frames or size > batch_size):
            batches.append(order[start:position])
            start, longest_with = position, int(lengths[index])
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    return batches


def bucket_batches(
    order: np.ndarray,
    lengths: np.ndarray,
    window: int,
    batch_size: int,
    max_frames: int | None = None,
    drop_last: bool = False,
) -> list[np.ndarray]:
    """Length-bucketed batches of ``order``: each run of ``window`` consecutive items is sorted by
    length (stable) and cut on its own by :func:`cut_batches`, so no batch mixes the longest items of
    one window with the shortest of the next. Batches come in window order, shortest first within a
    window; callers shuffle them. ``drop_last`` as in :func:`cut_batches`, for the final batch."""
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        batches += cut_batches(chunk[np.argsort(lengths[chunk], kind="stable")], lengths, batch_size, max_frames)
    if drop_last and max_frames is None and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
