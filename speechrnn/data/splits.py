"""Split policy: which examples train, validate and test, and the checks that a run's splits can work.

Splits are honest by default: a corpus's own splits are kept; otherwise whole speakers are held out
when speakers are known, so validation and test measure voices never heard in training. The checks
run twice: from the list of examples alone, before any audio is read (:func:`check_planned_splits`),
and on what was stored, after bad files were skipped (:func:`check_stored_splits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from speechrnn.data.records import Record
from speechrnn.errors import ConfigError, UserInputError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise :class:`ConfigError` unless both fractions are in ``[0, 1)`` and leave data to train on."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must leave data to train on, got {val_fraction} + {test_fraction}"
        )


def assign_splits(
    records: list[Record], val_fraction: float, test_fraction: float, seed: int, stratify: bool = True
) -> list[str]:
    """Split of each record: the record's own when every record has one; otherwise speaker-disjoint
    when speakers are known (whole speakers go to val/test); otherwise random, stratified by label
    when ``stratify``."""
    with_split = sum(1 for r in records if r.split)
    if 0 < with_split < len(records):
        missing = next(r.source for r in records if not r.split)
        raise ValueError(
            f"{len(records) - with_split} of {len(records)} examples have no split (e.g. {missing}); "
            "give every example a split or none"
        )
    if records and with_split:
        unknown = sorted({r.split for r in records} - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split names {unknown}; use train, val or test")
        return [r.split for r in records]  # type: ignore[misc]
    rng = np.random.default_rng(seed)
    if records and all(r.speaker for r in records):
        speakers = sorted({r.speaker for r in records})  # type: ignore[type-var]
        rng.shuffle(speakers)
        n_test = max(1, round(test_fraction * len(speakers))) if test_fraction > 0 else 0
        n_val = max(1, round(val_fraction * len(speakers))) if val_fraction > 0 else 0
        if n_test + n_val >= len(speakers):
            raise ValueError(
                f"{len(speakers)} speakers cannot give speaker-disjoint train/val/test splits with "
                f"val_fraction={val_fraction} and test_fraction={test_fraction}"
            )
        split_of = {s: "test" for s in speakers[:n_test]}
        split_of.update({s: "val" for s in speakers[n_test : n_test + n_val]})
        return [split_of.get(r.speaker, "train") for r in records]  # type: ignore[arg-type]
    splits = ["train"] * len(records)
    by_label: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        by_label.setdefault(record.label if stratify else "", []).append(position)
    for label in sorted(by_label):
        positions = np.array(by_label[label])
        rng.shuffle(positions)
        n_test = math.floor(test_fraction * len(positions) + 0.5)
        n_val = math.floor(val_fraction * len(positions) + 0.5)
        for p in positions[:n_test]:
            splits[p] = "test"
        for p in positions[n_test : n_test + n_val]:
            splits[p] = "val"
    return splits


def fraction_hint(split: str, fraction: float | None) -> str:
    """What to change when ``split`` would be empty but ``python -m speechrnn.fit`` needs it (nothing
    to say for ``train``); ``fraction``: the DataModule's ``<split>_fraction``, when it has one."""
    if split == "train":
        return ""
    option = f"; {split}_fraction is {fraction}" if fraction is not None else ""
    return (
        f"{option} (python -m speechrnn.fit validates on val and tests the best checkpoint on test: "
        f"give the data a {split} split or a {split}_fraction > 0)"
    )


def require_trained_classes(owner: str, classes: Iterable[str], train_labels: Iterable[str]) -> None:
    """Raise :class:`UserInputError` naming every class of ``classes`` (in their order) that none of
    ``train_labels`` is: a model cannot learn a class it never sees."""
    seen = set(train_labels)
    missing = [name for name in classes if name not in seen]
    if missing:
        raise UserInputError(f"{owner}: classes with no training examples: {missing}")


def check_planned_splits(
    owner: str,
    records: Sequence[Record],
    splits: Sequence[str],
    required: Iterable[str],
    classification: bool,
    hint: Callable[[str], str],
) -> None:
    """From the list of examples alone (no audio read): for ``classification``, at least two classes,
    each with training examples; and data in each ``required`` split (``hint(split)`` says what to
    change when one is empty). ``owner`` names the DataModule in the errors."""
    if classification:
        labels = sorted({r.label for r in records})
        if len(labels) < 2:
            raise UserInputError(
                f"{owner}: the data has one class only ({labels[0]!r}); classification needs two or more"
            )
        train = (r.label for r, split in zip(records, splits, strict=True) if split == "train")
        require_trained_classes(owner, labels, train)
    for split in required:
        if split not in splits:
            raise UserInputError(f"{owner}: the {split} split would have no data{hint(split)}")


def check_stored_splits(owner: str, splits: Mapping[str, np.ndarray], required: Iterable[str]) -> None:
    """After the store was built: every ``required`` split still holds data (skipped files can empty one)."""
    for split in required:
        if len(splits[split]) == 0:
            raise UserInputError(f"{owner}: the {split} split has no data left after skipped files")


def describe_validation(train_speakers: set[str | None], val_speakers: set[str | None]) -> tuple[str, bool]:
    """What the validation split measures, in words for the run's report (accuracy on voices never
    heard in training, or on voices it was trained on), and whether it shares speakers with training;
    ``None`` among the speakers means an example's speaker is unknown."""
    if not val_speakers:
        return "none (no validation split)", False
    if None in train_speakers | val_speakers:
        return "speakers unknown (cannot tell whether validation voices were heard in training)", False
    shared = train_speakers & val_speakers
    if not shared:
        names = sorted(val_speakers)  # type: ignore[type-var]
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return f"speaker-disjoint ({len(names)} speaker(s) never heard in training: {listed})", False
    return (
        f"shares {len(shared)} of {len(val_speakers)} speaker(s) with training: checkpoint selection and "
        "early stopping track accuracy on voices the model was trained on, which overstates new-speaker accuracy",
        True,
    )
