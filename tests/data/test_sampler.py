from __future__ import annotations

import numpy as np
import pytest

from speechrnn.data import BucketBatchSampler

LENGTHS = np.random.default_rng(0).integers(5, 200, size=203)


def test_every_index_once_and_batches_have_similar_lengths() -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=16, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    spread = np.mean([np.ptp(LENGTHS[b]) for b in batches])
    random_spread = np.mean([np.ptp(LENGTHS[b]) for b in np.array_split(np.random.default_rng(2).permutation(203), 13)])
    assert spread < random_spread / 4


def test_order_is_seeded_and_changes_with_the_epoch() -> None:
    a, b = BucketBatchSampler(LENGTHS, 16, seed=1), BucketBatchSampler(LENGTHS, 16, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(BucketBatchSampler(LENGTHS, 16, seed=2)) != list(b)


def test_frame_budget_bounds_padded_frames() -> None:
    sampler = BucketBatchSampler(LENGTHS, batch_size=64, max_frames=1000, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    for batch in batches:
        assert len(batch) == 1 or LENGTHS[batch].max() * len(batch) <= 1000


def test_shards_are_disjoint_for_eval_and_even_for_training() -> None:
    shards = [
        list(BucketBatchSampler(LENGTHS, 16, shuffle=False, num_replicas=2, rank=r, even_shards=False)) for r in (0, 1)
    ]
    flat = [i for shard in shards for b in shard for i in b]
    assert sorted(flat) == list(range(len(LENGTHS)))
    train = [BucketBatchSampler(LENGTHS, 16, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(list(train[0])) == len(list(train[1])) == len(train[0]) == 7


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(LENGTHS, 0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(LENGTHS, 4, num_replicas=2, rank=2)
