"""``SequenceDataModule``: feature sequences that are not audio (time series, precomputed features).

Same splitting, batching and model as the audio path; per-feature normalisation (``normalize='dataset'``)
uses statistics of the training split only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from speechrnn.data.base import SequenceDataModuleBase
from speechrnn.data.records import Record
from speechrnn.data.storage.feature_cache import ConcatenatedFeatureStore
from speechrnn.errors import ConfigError, MissingInputError, UserInputError
from speechrnn.normalization import Normalization

SequenceTask = Literal["classification", "regression", "frame_classification", "frame_regression"]


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` holding ``features`` (concatenated ``(total_frames, F)``) with ``lengths``
    (frames per sequence), or equal-length sequences ``(N, T, F)``; ``labels`` (one per sequence)
    and/or per-step ``targets`` laid out like the features (``(total_frames[, D])`` or
    ``(N, T[, D])``); and optional ``groups`` (speakers, subjects, ...) and ``splits``.

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
            "speechrnn.data.corpora.sequences.save_npz(path, sequences, labels)"
        ) from None
    except (OSError, EOFError) as error:
        raise UserInputError(f"{path}: not a readable .npz archive ({error})") from None
    if "features" not in arrays:
        raise UserInputError(f"{path}: no 'features' array (found {sorted(arrays)})")
    if "labels" not in arrays and "targets" not in arrays:
        raise UserInputError(f"{path}: no 'labels' (one per sequence) or 'targets' (one per step) array")
    features = arrays["features"]
    if "lengths" not in arrays:
        if features.ndim != 3:
            raise UserInputError(
                f"{path}: features of shape {features.shape} without lengths; give (total_frames, F) features "
                "with a lengths array, or equal-length sequences as (N, T, F)"
            )
        arrays["features"] = list(features)
        if "targets" in arrays:
            if arrays["targets"].shape[:2] != features.shape[:2]:
                raise UserInputError(
                    f"{path}: targets of shape {arrays['targets'].shape} for features {features.shape}"
                )
            arrays["targets"] = list(arrays["targets"])
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
    if "targets" in arrays:
        targets = arrays["targets"]
        if len(targets) != len(features):
            raise UserInputError(f"{path}: targets has {len(targets)} steps but features has {len(features)} frames")
        arrays["targets"] = [targets[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return arrays


def save_npz(
    path: str | os.PathLike,
    sequences: Sequence[np.ndarray],
    labels: Sequence | None = None,
    groups: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    targets: Sequence[np.ndarray] | None = None,
) -> Path:
    """Write ``(T_i, F)`` sequences with labels and/or per-step ``(T_i[, D])`` targets in the layout
    :func:`load_npz` reads (no object arrays), atomically."""
    import io

    from speechrnn.io import atomic_write_bytes

    arrays = {
        "features": np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences]),
        "lengths": np.array([len(s) for s in sequences], dtype=np.int64),
    }
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if targets is not None:
        arrays["targets"] = np.concatenate([np.asarray(t) for t in targets])
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
    next value of a series). ``frame_classification`` (integer class indices ``0..C-1``) and
    ``frame_regression`` (values, ``(T_i,)`` or ``(T_i, D)``) read per-step ``targets`` instead: one
    per frame, padded in batches like the features. The model's task follows the DataModule's.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        task: SequenceTask = "classification",
        normalize: Normalization | bool = "dataset",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            path: ``.npz`` file (see :func:`load_npz`); use :meth:`from_arrays` from Python.
            task: ``classification`` (labels are classes) or ``regression`` (labels are numbers) of
                whole sequences; ``frame_classification`` / ``frame_regression``: per-step targets.
            normalize: ``dataset`` standardises each feature with the mean and deviation of the
                training split; ``none`` keeps the values as they are (``True``/``False`` mean the
                same). Per-utterance and per-speaker normalisation are for audio (``features.normalize``).
            **kwargs: Batching and split options of :class:`SequenceDataModuleBase`.
        """
        super().__init__(**kwargs)
        if task not in get_args(SequenceTask):
            raise ValueError(f"task must be one of {', '.join(get_args(SequenceTask))}, got {task!r}")
        self.path = path
        self._task = task
        if isinstance(normalize, bool):
            normalize = "dataset" if normalize else "none"
        if normalize not in ("dataset", "none"):
            raise ConfigError(
                f"SequenceDataModule: normalize must be 'dataset' or 'none' (per-utterance and per-speaker "
                f"normalisation are for audio features), got {normalize!r}"
            )
        self._normalization: Normalization = normalize
        self._arrays: dict[str, np.ndarray] | None = None

    @classmethod
    def from_arrays(
        cls,
        sequences: Sequence[np.ndarray],
        labels: Sequence | None = None,
        *,
        groups: Sequence[str] | None = None,
        splits: Sequence[str] | None = None,
        targets: Sequence[np.ndarray] | None = None,
        **kwargs,
    ) -> SequenceDataModule:
        """Build from in-memory ``(T_i, F)`` arrays with labels or per-step ``(T_i[, D])`` targets
        (and optional groups and splits)."""
        datamodule = cls(**kwargs)
        arrays: dict[str, Any] = {"features": list(sequences)}
        if labels is not None:
            arrays["labels"] = np.asarray(labels)
        if targets is not None:
            arrays["targets"] = [np.asarray(t) for t in targets]
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
    def per_step(self) -> bool:
        return self._task.startswith("frame_")

    @property
    def class_names(self) -> list[str]:
        if self._task == "regression":
            return ["value"]
        if self._task == "frame_regression":
            dims = int(np.prod(np.shape(self.step_targets[0])[1:]))
            return ["value"] if dims == 1 else [f"value{i}" for i in range(dims)]
        if self._task == "frame_classification":
            return [str(i) for i in range(int(max(int(t.max()) for t in self.step_targets if len(t))) + 1)]
        return super().class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def step_targets(self) -> list[np.ndarray]:
        """The per-step targets of every sequence (``frame_*`` tasks)."""
        if "targets" not in self.arrays:
            raise UserInputError(f"SequenceDataModule: task {self._task} needs per-step 'targets' in the data")
        return self.arrays["targets"]

    @property
    def normalization(self) -> Normalization:
        """``dataset`` (training-split statistics) or ``none``, as ``normalize`` said."""
        return self._normalization

    def load_records(self) -> list[Record]:
        arrays = self.arrays
        count = len(arrays["features"])
        for key in ("labels", "targets", "groups", "splits"):
            if key in arrays and len(arrays[key]) != count:
                raise ValueError(f"{key} has {len(arrays[key])} entries for {count} sequences")
        if not self.per_step and "labels" not in arrays:
            raise UserInputError(f"SequenceDataModule: task {self._task} needs one label per sequence ('labels')")
        groups, splits = arrays.get("groups"), arrays.get("splits")
        labels = arrays["labels"] if not self.per_step else ["steps"] * count
        return [
            Record(
                source=f"sequence-{i}",
                label=str(labels[i]),
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
        if self.per_step:
            for i, (sequence, target) in enumerate(zip(sequences, self.step_targets, strict=True)):
                if len(target) != len(sequence):
                    raise ValueError(f"sequence {i}: {len(target)} targets for {len(sequence)} frames")
                if self._task == "frame_classification" and (
                    not np.issubdtype(np.asarray(target).dtype, np.integer) or (np.asarray(target) < 0).any()
                ):
                    raise ValueError(f"sequence {i}: frame_classification targets must be class indices 0..C-1")
        return ConcatenatedFeatureStore.from_arrays(sequences), list(range(len(records)))

    def targets(self) -> np.ndarray:
        if self.per_step:
            dtype = np.int64 if self._task == "frame_classification" else np.float32
            steps = np.empty(len(self.store_records), dtype=object)  # ragged: one array per sequence
            for position, record in enumerate(self.store_records):
                steps[position] = np.asarray(self.step_targets[record], dtype=dtype)
            return steps
        if self._task == "regression":
            return np.asarray(self.arrays["labels"], dtype=np.float32)[self.store_records]
        return super().targets()
