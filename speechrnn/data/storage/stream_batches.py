"""Length-bucketed batches from LitData's stream of one shard split, sharded across processes and
resumable mid-epoch.

Items arrive in LitData's order: for training, shuffled chunk by chunk (seeded, new each epoch), each
process reading its own chunks; for evaluation, in storage order, every clip exactly once across
processes. Every ``window`` items are sorted by length and cut into batches by the rule of
:class:`~speechrnn.data.storage.bucketing.BucketBatchSampler` (:func:`~speechrnn.data.storage.bucketing.bucket_batches`:
``batch_size`` items, or at most ``max_frames`` padded frames), and a training window's batches are
shuffled (seeded by seed, epoch and window). Given the same item order and window, the batches are the
sampler's.

Under DDP every training process takes the same number of clips per epoch, ``N // world_size``
(LitData hands the clips left over to the last process, which stops at that count: up to
``world_size - 1`` clips, random ones each epoch, wait for a later epoch), so processes run the same
number of steps; with a frame budget, the processes agree on the number of batches of each window
(one all-reduce per window) and a process with fewer repeats some of its own.

The position in an epoch (window, batches into it, and LitData's loader state at the window's start)
is :meth:`StreamBatches.state_dict`; loading it continues the epoch with exactly the batches that were
left, on any number of machines as long as processes, workers and batching options are the same.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from speechrnn.data.storage.bucketing import bucket_batches

Item = tuple[np.ndarray, Any, int]


@dataclass(frozen=True)
class _Window:
    number: int
    first: int
    """Batches of the epoch before this window's first."""
    count: int
    before: dict[str, Any] | None
    """LitData's loader state before the window's items were read."""
    after: dict[str, Any] | None


def _first(items: list[Any]) -> Any:
    return items[0]


@dataclass(frozen=True)
class StreamSettings:
    """The batching of a :class:`StreamBatches`: what a saved position depends on."""

    batch_size: int
    max_frames: int | None
    window: int
    bucketing: bool
    seed: int
    world_size: int
    num_workers: int


class StreamBatches:
    """An iterable of padded batches ``(features, lengths, targets, indices)`` from a LitData
    ``StreamingDataset`` of shard items (see :mod:`speechrnn.data.storage.shards`).

    Args:
        dataset: The split's ``StreamingDataset``; its world size and rank are LitData's (detected
            from ``torch.distributed`` when it was created).
        count: Clips in the split.
        collate: Pads a list of ``(features, target, index)`` items into a batch.
        batch_size, max_frames: The batch rule of :class:`~speechrnn.data.storage.bucketing.BucketBatchSampler`.
        window: Items sorted by length together.
        bucketing: Sort windows by length (otherwise batches keep the stream's order).
        training: Shuffle (seeded), and equal steps on every process; otherwise storage order, every
            clip once across processes.
        seed: Seed of LitData's shuffle and of the batch order.
        num_workers: LitData loader workers.
        batches_done: How many yielded batches the consumer has finished (Lightning fetches one
            ahead when a loader has no length); None counts every yielded batch as finished.
    """

    def __init__(
        self,
        dataset: Any,
        count: int,
        collate: Callable[[list[Item]], Any],
        batch_size: int,
        max_frames: int | None,
        window: int,
        bucketing: bool = True,
        training: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        batches_done: Callable[[], int] | None = None,
    ) -> None:
        self.source, self.collate, self.training, self.batches_done = dataset, collate, training, batches_done
        self.config = StreamSettings(
            batch_size=batch_size,
            max_frames=max_frames if bucketing else None,  # as BucketBatchSampler without bucketing
            window=window,
            bucketing=bucketing,
            seed=seed,
            world_size=dataset.distributed_env.world_size,
            num_workers=num_workers,
        )
        if count < self.config.world_size:
            raise ValueError(f"{count} clip(s) cannot be shared among {self.config.world_size} processes")
        dataset.set_shuffle(training)
        dataset.set_drop_last(False)  # the last process gets the clips left over; training stops at items_per_epoch
        self.items_per_epoch = count // self.config.world_size if training else None
        self.epoch = 0
        self._yielded = 0
        self._windows: list[_Window] = []
        self._finished = True
        self._resume: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """What a saved position depends on (checked when one is loaded)."""
        return dataclasses.asdict(self.config)

    def _items(self) -> int:
        if self.items_per_epoch is not None:
            return self.items_per_epoch
        return self.source.get_len(self.config.num_workers, 1)

    def __len__(self) -> int:
        if self.config.max_frames is not None:
            raise TypeError("batches under a frame budget are counted only as the stream is read")
        full, rest = divmod(self._items(), self.config.window)
        return full * math.ceil(self.config.window / self.config.batch_size) + math.ceil(rest / self.config.batch_size)

    def _loader(self) -> Any:
        from litdata import StreamingDataLoader

        return StreamingDataLoader(
            self.source, batch_size=1, num_workers=self.config.num_workers, collate_fn=_first,
            shuffle=self.training, drop_last=self.source.drop_last,
        )  # fmt: skip

    def _batches(self, items: list[Item], epoch: int, window: int) -> list[list[Item]]:
        lengths = (
            np.array([len(item[0]) for item in items]) if self.config.bucketing else np.zeros(len(items), np.int64)
        )
        cut = bucket_batches(np.arange(len(items)), lengths, len(items), self.config.batch_size, self.config.max_frames)
        if self.training:
            cut = [cut[i] for i in np.random.default_rng([self.config.seed, epoch, window]).permutation(len(cut))]
        return [[items[i] for i in batch] for batch in cut]

    def _agreed_count(self, count: int) -> int:
        """The number of batches every process yields for this window."""
        if not (self.training and self.config.world_size > 1 and self.config.max_frames is not None):
            return count  # equal windows give equal counts
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([count], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def __iter__(self) -> Iterator[Any]:
        epoch, window, skip, first, before = self._starting_point()
        self.epoch, self._yielded, self._windows, self._finished = epoch, first + skip, [], False
        left = None if self.items_per_epoch is None else max(0, self.items_per_epoch - window * self.config.window)
        loader = self._loader()
        if window == 0:
            loader.current_epoch = epoch - 1  # its iteration counts up to this epoch
        elif left:
            loader.load_state_dict(copy.deepcopy(before))
        stream = itertools.islice(iter(loader), left) if window == 0 or left else iter(())
        while True:
            items = self._read_window(stream, left)
            left = None if left is None else left - len(items)
            after = copy.deepcopy(loader.state_dict()) if len(items) == self.config.window else None
            batches = self._batches(items, epoch, window) if items else []
            count = self._agreed_count(len(batches))
            if count == 0:
                break
            self._windows = [*self._windows[-1:], _Window(window, first, count, before, after)]
            for k in range(skip, count):
                self._yielded = first + k + 1
                yield self.collate(batches[k % len(batches)])
            first, skip, window, before = first + count, 0, window + 1, after
        self._finished = True

    def _starting_point(self) -> tuple[int, int, int, int, dict[str, Any] | None]:
        """Epoch, window, batches to skip in it, batches before it, and LitData's state at its start."""
        start, self._resume = self._resume, None
        if start is None or start.get("finished"):
            return (start["epoch"] if start else self.epoch) + 1, 0, 0, 0, None
        return start["epoch"], start["window"], start["skip"], start["batches"] - start["skip"], start["litdata"]

    def _read_window(self, stream: Iterator[dict[str, Any]], left: int | None) -> list[Item]:
        items = [
            (raw["features"], raw["target"], int(raw["index"])) for raw in itertools.islice(stream, self.config.window)
        ]
        if left is not None and len(items) < min(self.config.window, left):
            rank = self.source.distributed_env.global_rank
            raise RuntimeError(f"process {rank}: LitData's stream ended {left - len(items)} clip(s) early")
        return items

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches the consumer finished: a finished epoch, or the window,
        the batches into it, and LitData's loader state at its start."""
        if self._resume is not None:
            return copy.deepcopy(self._resume)  # loaded, not yet continued
        done = self.batches_done() if self.batches_done is not None else self._yielded
        known = None if self.config.max_frames is not None else len(self)
        state: dict[str, Any] = {"epoch": self.epoch, "settings": self.settings}
        if (self._finished and done >= self._yielded) or (known is not None and done >= known):
            return {**state, "finished": True}
        for window in reversed(self._windows):
            if window.first <= done < window.first + window.count:
                return {**state, "window": window.number, "skip": done - window.first, "batches": done,
                        "litdata": window.before}  # fmt: skip
            if done == window.first + window.count:
                return {**state, "window": window.number + 1, "skip": 0, "batches": done, "litdata": window.after}
        raise RuntimeError(f"no saved position for batch {done} of epoch {self.epoch}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` position at the next iteration."""
        saved = state.get("settings", {})
        changed = {key: (saved.get(key), value) for key, value in self.settings.items() if saved.get(key) != value}
        if changed:
            listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(f"cannot resume a stream position saved with other settings: {listed}")
        self.epoch = int(state["epoch"])
        self._resume = copy.deepcopy(state)
