"""Non-audio sequences go through the same splitting, normalisation, batching, model and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechrnn.data import SequenceDataModule
from speechrnn.errors import ConfigError
from speechrnn.fit import main


def random_walks(count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Class 1 drifts up then down, class 0 down then up: same values, different order."""
    sequences, labels = [], []
    for i in range(count):
        length = int(rng.integers(8, 30))
        ramp = np.concatenate([np.linspace(0, 1, length // 2), np.linspace(1, 0, length - length // 2)])
        label = i % 2
        series = (ramp if label else -ramp) * 3 + 10 + 0.1 * rng.standard_normal(length)
        sequences.append(np.stack([series, np.full(length, 5.0)], 1).astype(np.float32))
        labels.append(label)
    return sequences, np.array(labels)


def test_from_arrays_normalises_with_training_statistics_only() -> None:
    sequences, labels = random_walks(40, np.random.default_rng(0))
    dm = SequenceDataModule.from_arrays(sequences, labels, batch_size=8, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    train = np.concatenate([sequences[dm.store_records[i]] for i in dm.splits["train"]])
    np.testing.assert_allclose(dm.feature_mean, train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(dm.feature_std, train.std(0) + 1e-5, rtol=1e-4)
    features, lengths, labels_, _ = next(iter(dm.train_dataloader()))
    assert features.shape[2] == 2 and lengths.dtype == torch.int64 and labels_.dtype == torch.int64
    assert torch.all(features[lengths.argmin(), int(lengths.min()) :] == 0)
    assert dm.state_dict()["feature_mean"] == pytest.approx(dm.feature_mean.tolist())
    assert sum(len(v) for v in dm.splits.values()) == 40 and len(dm.splits["test"]) == 8


@pytest.mark.parametrize(
    "normalize, expected", [("dataset", "dataset"), (True, "dataset"), ("none", "none"), (False, "none")]
)
def test_normalize_takes_the_shared_modes_and_the_older_booleans(normalize: str | bool, expected: str) -> None:
    sequences, labels = random_walks(20, np.random.default_rng(3))
    dm = SequenceDataModule.from_arrays(sequences, labels, normalize=normalize)
    dm.setup("fit")
    assert dm.normalization == expected and (dm.feature_mean is not None) == (expected == "dataset")
    assert SequenceDataModule().normalization == "dataset", "the default keeps the training split's statistics"
    with pytest.raises(ConfigError, match="normalize must be 'dataset' or 'none'.*got 'speaker'"):
        SequenceDataModule(normalize="speaker")


def test_groups_give_disjoint_splits_and_regression_targets_are_floats() -> None:
    rng = np.random.default_rng(1)
    sequences = [rng.standard_normal((int(rng.integers(3, 9)), 3)).astype(np.float32) for _ in range(30)]
    targets = rng.standard_normal(30)
    groups = [f"g{i % 6}" for i in range(30)]
    dm = SequenceDataModule.from_arrays(sequences, targets, groups=groups, task="regression")
    dm.setup("fit")
    assert dm.num_classes == 1 and dm.task == "regression"
    split_groups = {k: {groups[dm.store_records[i]] for i in v} for k, v in dm.splits.items()}
    assert not split_groups["train"] & split_groups["test"]
    _, _, batch_targets, indices = next(iter(dm.train_dataloader()))
    assert batch_targets.dtype == torch.float32
    np.testing.assert_allclose(batch_targets.numpy(), targets[indices.numpy()].astype(np.float32))


def test_npz_trains_through_the_cli(tmp_path: Path) -> None:
    sequences, labels = random_walks(60, np.random.default_rng(2))
    path = tmp_path / "walks.npz"
    np.savez(path, features=np.concatenate(sequences), lengths=[len(s) for s in sequences], labels=labels)
    metrics = main([
        "--data", "SequenceDataModule", "--data.path", str(path), "--data.batch_size", "8",
        "--model.hidden_size", "16", "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    assert metrics["test/acc"] >= 0.9  # up, down and flat walks are easy (chance is 1/3; 1.0 measured)


def test_bad_sequences_are_named(tmp_path: Path) -> None:
    bad = [np.ones((4, 2), np.float32), np.full((3, 2), np.nan, np.float32)]
    dm = SequenceDataModule.from_arrays(bad, [0, 1], val_fraction=0, test_fraction=0)
    with pytest.raises(ValueError, match="sequence 1: contains NaN"):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"no 'labels' \(one per sequence\) or 'targets'"):
        np.savez(tmp_path / "nolabels.npz", features=np.ones((3, 2)), lengths=[3])
        _ = SequenceDataModule(path=tmp_path / "nolabels.npz").records
