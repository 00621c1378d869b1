"""``SequenceDataModule``: feature sequences that are not audio (time series, precomputed features).

Same splitting, batching and model as the audio path; per-feature normalisation uses statistics
of the training split only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from speechrnn.data.base import Record, SequenceDataModuleBase
from speechrnn.data.cache import ConcatenatedFeatureStore
from speechrnn.errors import MissingInputError, UserInputError

SequenceTask = Literal["classification", "regression"]


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` holding ``features`` (concatenated ``(total_frames, F)``) with ``lengths``
    (frames per sequence), or equal-length sequences ``(N, T, F)``; ``labels``; and optional
    ``groups`` (speakers, subjects, ...) and ``splits`` (train/val/test).

    Nothing in the file is unpickled: an archive of object arrays (ragged sequences saved as a
    list) is refused with the conversion to make (:func:`save_npz` writes the safe layout).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = dict(archive)
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise UserInputError(f"{path}: not a readable .npz archive ({error})") from None
        raise UserInputError(
            f"{path}: holds object arrays, which would have to be unpickled (a file can run code that "
            "way, so speechrnn never does). Store ragged sequences concatenated: features "
            "(total_frames, F) float32 plus lengths (frames per sequence), e.g. with "
            "speechrnn.data.sequences.save_npz(path, sequences, labels)"
        ) from None
    except (OSError, EOFError) as error:
        raise UserInputError(f"{path}: not a readable .npz archive ({error})") from None
    for key in ("features", "labels"):
        if key not in arrays:
            raise UserInputError(f"{path}: no {key!r} array (found {sorted(arrays)})")
    features = arrays["features"]
    if "lengths" not in arrays:
        if features.ndim != 3:
            raise UserInputError(
                f"{path}: features of shape {features.shape} without lengths; give (total_frames, F) features "
                "with a lengths array, or equal-length sequences as (N, T, F)"
            )
        arrays["features"] = list(features)
        return arrays
    lengths = np.asarray(arrays["lengths"])
    if features.ndim != 2:
        raise UserInputError(f"{path}: features with lengths must be (total_frames, F), got shape {features.shape}")
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any():
        raise UserInputError(f"{path}: lengths must be non-negative integers, one per sequence")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] != len(features):
        raise UserInputError(f"{path}: lengths sum to {offsets[-1]} but features has {len(features)} frames")
    arrays["features"] = [features[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return arrays


def save_npz(
    path: str | os.PathLike,
    sequences: Sequence[np.ndarray],
    labels: Sequence,
    groups: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
) -> Path:
    """Write ``(T_i, F)`` sequences in the layout :func:`load_npz` reads (no object arrays), atomically."""
    import io

    from speechrnn.io import atomic_write_bytes

    arrays = {
        "features": np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences]),
        "lengths": np.array([len(s) for s in sequences], dtype=np.int64),
        "labels": np.asarray(labels),
    }
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=str)
    if splits is not None:
        arrays["splits"] = np.asarray(splits, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


class SequenceDataModule(SequenceDataModuleBase):
    """Variable-length feature sequences ``(T_i, F)`` with labels, from an ``.npz`` file or arrays.

    ``task="regression"`` turns labels into float targets for many-to-one regression (e.g. the
    next value of a series); the model's task follows the DataModule's.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        task: SequenceTask = "classification",
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            path: ``.npz`` file (see :func:`load_npz`); use :meth:`from_arrays` from Python.
            task: ``classification`` (labels are classes) or ``regression`` (labels are numbers).
            normalize: Standardise each feature with mean and deviation of the training split.
            **kwargs: Batching and split options of :class:`SequenceDataModuleBase`.
        """
        super().__init__(**kwargs)
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be classification or regression, got {task!r}")
        self.path = path
        self._task = task
        self.normalize = normalize
        self._arrays: dict[str, np.ndarray] | None = None

    @classmethod
    def from_arrays(
        cls,
        sequences: Sequence[np.ndarray],
        labels: Sequence,
        groups: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
        **kwargs,
    ) -> SequenceDataModule:
        """Build from in-memory ``(T_i, F)`` arrays and labels (and optional groups and splits)."""
        datamodule = cls(**kwargs)
        arrays = {"features": list(sequences), "labels": np.asarray(labels)}
        if groups is not None:
            arrays["groups"] = np.asarray(groups)
        if splits is not None:
            arrays["splits"] = np.asarray(splits)
        datamodule._arrays = arrays
        return datamodule

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            if self.path is None:
                raise ValueError("give SequenceDataModule a path to an .npz file, or build it with from_arrays()")
            self._arrays = load_npz(self.path)
        return self._arrays

    @property
    def task(self) -> str:
        return self._task

    @property
    def feature_dim(self) -> int:
        """The feature size most sequences share (so an odd sequence is the one blamed, wherever it is)."""
        widths = Counter(int(np.shape(s)[1]) for s in self.arrays["features"] if np.ndim(s) == 2)
        if not widths:
            raise ValueError("SequenceDataModule: no sequence is a 2-D (time, features) array")
        return widths.most_common(1)[0][0]

    @property
    def class_names(self) -> list[str]:
        return ["value"] if self._task == "regression" else super().class_names

    @property
    def num_classes(self) -> int:
        return 1 if self._task == "regression" else len(self.class_names)

    def use_dataset_stats(self) -> bool:
        return self.normalize

    def load_records(self) -> list[Record]:
        arrays = self.arrays
        count = len(arrays["features"])
        for key in ("labels", "groups", "splits"):
            if key in arrays and len(arrays[key]) != count:
                raise ValueError(f"{key} has {len(arrays[key])} entries for {count} sequences")
        groups, splits = arrays.get("groups"), arrays.get("splits")
        return [
            Record(
                source=f"sequence-{i}",
                label=str(arrays["labels"][i]),
                speaker=None if groups is None else str(groups[i]),
                split=None if splits is None else str(splits[i]),
            )
            for i in range(count)
        ]

    def build_store(self, records: list[Record]) -> tuple[ConcatenatedFeatureStore, list[int]]:
        dim = self.feature_dim
        sequences = [np.asarray(s, dtype=np.float32) for s in self.arrays["features"]]
        for i, sequence in enumerate(sequences):
            if sequence.ndim != 2 or sequence.shape[1] != dim or len(sequence) == 0:
                raise ValueError(
                    f"sequence {i}: shape {sequence.shape}, expected (T > 0, {dim}) like the other sequences"
                )
            if not np.isfinite(sequence).all():
                raise ValueError(f"sequence {i}: contains NaN or infinite values")
        return ConcatenatedFeatureStore.from_arrays(sequences), list(range(len(records)))

    def targets(self) -> np.ndarray:
        if self._task == "regression":
            return np.asarray(self.arrays["labels"], dtype=np.float32)[self.store_records]
        return super().targets()

    def _check_splits(self) -> None:
        if self._task == "regression":
            for split in self.required_splits:
                if len(self.splits[split]) == 0:
                    raise UserInputError(f"SequenceDataModule: the {split} split has no data")
            return
        super()._check_splits()
