"""The general audio DataModule: a folder with one subfolder per class, or a CSV manifest."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from speechrnn.data.audio import AudioDataModule, OnError
from speechrnn.data.augment import AugmentSettings
from speechrnn.data.base import Record
from speechrnn.features import FeatureSettings

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def read_manifest(
    manifest: str | os.PathLike,
    path_column: str = "path",
    label_column: str = "label",
    speaker_column: str = "speaker",
    split_column: str = "split",
) -> list[Record]:
    """Records of a CSV manifest; relative paths are resolved against the manifest's folder.

    The speaker and split columns are optional; an empty cell means unknown.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found")
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for required in (path_column, label_column):
            if required not in columns:
                raise ValueError(f"{manifest}: no column {required!r} (columns: {columns})")
        records = []
        for line, row in enumerate(reader, start=2):
            if not row[path_column] or not row[label_column]:
                raise ValueError(f"{manifest}:{line}: empty path or label")
            path = Path(row[path_column])
            records.append(
                Record(
                    source=str(path if path.is_absolute() else manifest.parent / path),
                    label=row[label_column],
                    speaker=row.get(speaker_column) or None,
                    split=row.get(split_column) or None,
                )
            )
    return records


def scan_class_folders(root: str | os.PathLike, speaker_pattern: str | None = None) -> list[Record]:
    """Records of ``root/<label>/**/<file>`` for audio files; speakers from ``speaker_pattern``
    (a regular expression with a ``speaker`` group, matched against the file name) when given."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: audio folder not found")
    pattern = re.compile(speaker_pattern) if speaker_pattern else None
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
                continue
            speaker = None
            if pattern is not None:
                match = pattern.search(path.name)
                speaker = match.group("speaker") if match else None
            records.append(Record(str(path), class_dir.name, speaker))
    if not records:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class subfolders")
    return records


class AudioFolderDataModule(AudioDataModule):
    """Audio classification data from ``root/<label>/*.wav`` or from a CSV manifest.

    Any sample rate, mono or stereo, wav/flac/ogg. Without a split column the split is
    deterministic from ``seed``, and speaker-disjoint whenever speakers are known.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        path_column: str = "path",
        label_column: str = "label",
        speaker_column: str = "speaker",
        split_column: str = "split",
        speaker_pattern: str | None = None,
        features: FeatureSettings = FeatureSettings(),
        cache_dir: str | os.PathLike = "data/cache",
        on_error: OnError = "raise",
        cache_workers: int = 0,
        on_device_features: bool = False,
        augment: AugmentSettings = AugmentSettings(),
        batch_size: int = 32,
        max_frames: int | None = None,
        bucketing: bool = True,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: Folder with one subfolder of audio files per class.
            manifest: CSV file with a path and a label column, optionally speaker and split
                (train/val/test); relative paths are resolved against the manifest's folder.
            path_column: Manifest column holding the audio path.
            label_column: Manifest column holding the class label.
            speaker_column: Manifest column holding the speaker id (optional).
            split_column: Manifest column holding the split (optional).
            speaker_pattern: For ``root``: regular expression with a ``(?P<speaker>...)`` group
                matched against file names, e.g. ``^(?P<speaker>[^_]+)_``.
        """
        super().__init__(
            features=features, cache_dir=cache_dir, on_error=on_error, cache_workers=cache_workers,
            on_device_features=on_device_features, augment=augment, batch_size=batch_size, max_frames=max_frames,
            bucketing=bucketing, num_workers=num_workers, val_fraction=val_fraction, test_fraction=test_fraction,
            seed=seed,
        )  # fmt: skip
        if (root is None) == (manifest is None):
            raise ValueError("give exactly one of root (class folders) or manifest (CSV)")
        self.root = Path(root) if root is not None else None
        self.manifest = Path(manifest) if manifest is not None else None
        self.columns = (path_column, label_column, speaker_column, split_column)
        self.speaker_pattern = speaker_pattern

    @property
    def name(self) -> str:
        source = self.manifest.parent if self.manifest is not None else self.root
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).resolve().name) or "audio"  # type: ignore[arg-type]

    def load_records(self) -> list[Record]:
        if self.manifest is not None:
            return read_manifest(self.manifest, *self.columns)
        return scan_class_folders(self.root, self.speaker_pattern)  # type: ignore[arg-type]
