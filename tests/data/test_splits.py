"""Split policy on its own: the checks a run's splits must pass and what validation measures."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from speechrnn.data import splits
from speechrnn.data.records import Record
from speechrnn.errors import ConfigError, UserInputError


def test_fractions_must_leave_data_to_train_on() -> None:
    splits.check_fractions(0.15, 0.15)
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        splits.check_fractions(1.0, 0.0)
    with pytest.raises(ConfigError, match="must leave data to train on"):
        splits.check_fractions(0.5, 0.5)


def test_one_check_names_the_classes_training_never_sees_in_their_order() -> None:
    splits.require_trained_classes("Data", ["a", "b"], ["b", "a", "a"])
    with pytest.raises(UserInputError, match=r"Data: classes with no training examples: \['c', 'a'\]"):
        splits.require_trained_classes("Data", ["c", "b", "a"], iter(["b"]))


def test_planned_splits_need_two_classes_trained_and_every_required_split() -> None:
    records = [Record(f"{i}.wav", "ab"[i % 2]) for i in range(4)]
    hint = partial(splits.fraction_hint, fraction=0.0)
    splits.check_planned_splits("Data", records, ["train"] * 4, ["train"], True, hint)
    with pytest.raises(UserInputError, match="one class only"):
        splits.check_planned_splits("Data", records[::2], ["train"] * 2, ["train"], True, hint)
    with pytest.raises(UserInputError, match=r"classes with no training examples: \['b'\]"):
        splits.check_planned_splits("Data", records, ["train", "val"] * 2, ["train"], True, hint)
    splits.check_planned_splits(
        "Data", records[::2], ["train"] * 2, ["train"], False, hint
    )  # regression: one "class" is fine
    with pytest.raises(UserInputError, match="the val split would have no data; val_fraction is 0.0"):
        splits.check_planned_splits("Data", records, ["train"] * 4, ["train", "val"], True, hint)
    assert splits.fraction_hint("train", 0.0) == ""


def test_stored_splits_must_still_hold_data() -> None:
    stored = {"train": np.arange(3), "val": np.arange(0), "test": np.arange(1)}
    splits.check_stored_splits("Data", stored, ["train", "test"])
    with pytest.raises(UserInputError, match="the val split has no data left after skipped files"):
        splits.check_stored_splits("Data", stored, ["train", "val"])


def test_validation_is_described_by_the_voices_it_holds() -> None:
    assert splits.describe_validation({"a"}, set()) == ("none (no validation split)", False)
    assert splits.describe_validation({"a", None}, {"b"})[0].startswith("speakers unknown")
    assert splits.describe_validation({"a"}, {"b", "c"}) == (
        "speaker-disjoint (2 speaker(s) never heard in training: b, c)",
        False,
    )
    words, shared = splits.describe_validation({"a", "b"}, {"b", "c"})
    assert shared and words.startswith("shares 1 of 2 speaker(s) with training")
