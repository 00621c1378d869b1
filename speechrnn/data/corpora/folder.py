"""The general audio DataModule: a folder with one subfolder per class, or a CSV manifest."""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speechrnn.audio_io import AUDIO_EXTENSIONS
from speechrnn.data.audio_base import AudioDataModule, OnError
from speechrnn.data.open_set import BACKGROUND_FOLDER
from speechrnn.data.records import Record
from speechrnn.errors import MissingInputError, UserInputError


def read_manifest(
    manifest: str | os.PathLike,
    path_column: str = "path",
    label_column: str = "label",
    speaker_column: str = "speaker",
    split_column: str = "split",
    segments_column: str = "segments",
) -> list[Record]:
    """Records of a CSV manifest; relative paths are resolved against the manifest's folder.

    The speaker, split and segments columns are optional; an empty speaker or split means unknown.
    Segments say where the speech is, as ``start-end`` seconds separated by ``;`` (e.g.
    ``0.21-0.73``; empty: no speech), and feed frame-level tasks such as voice activity detection.
    A byte-order mark (as spreadsheet programs write) is ignored. A file listed twice is an error naming both lines,
    unless the rows are identical, which gives a warning and one record.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise MissingInputError(f"{manifest}: manifest not found")
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for required in (path_column, label_column):
            if required not in columns:
                raise UserInputError(f"{manifest}: no column {required!r} (columns: {columns})")
        records: list[Record] = []
        line_of: dict[str, int] = {}
        repeated: list[int] = []
        for line, row in enumerate(reader, start=2):
            if not row[path_column] or not row[label_column]:
                raise UserInputError(f"{manifest}:{line}: empty path or label")
            path = Path(row[path_column])
            record = Record(
                source=os.path.normpath(path if path.is_absolute() else manifest.parent / path),
                label=row[label_column],
                speaker=row.get(speaker_column) or None,
                split=row.get(split_column) or None,
                segments=_segments_cell(row.get(segments_column), f"{manifest}:{line}"),
            )
            first = line_of.get(record.source)
            if first is None:
                line_of[record.source] = line
                records.append(record)
                continue
            earlier = next(r for r in records if r.source == record.source)
            if earlier != record:
                raise UserInputError(
                    f"{manifest}: lines {first} and {line} list the same file {row[path_column]!r} with "
                    f"different {_differences(earlier, record)}; each file must appear once"
                )
            repeated.append(line)
    if repeated:
        warnings.warn(
            f"{manifest}: {len(repeated)} duplicate row(s) (lines {repeated[:10]}) repeat an earlier row "
            "exactly; each file is used once",
            stacklevel=2,
        )
    return records


def _differences(a: Record, b: Record) -> str:
    return " and ".join(
        f"{name} ({getattr(a, name)!r} vs {getattr(b, name)!r})"
        for name in ("label", "speaker", "split", "segments")
        if getattr(a, name) != getattr(b, name)
    )


def format_segments(segments: Sequence[tuple[float, float]]) -> str:
    """A manifest's segments cell: ``start-end`` seconds joined by ``;``."""
    return ";".join(f"{start:.4f}-{end:.4f}" for start, end in segments)


def parse_segments(cell: str) -> tuple[tuple[float, float], ...]:
    """The ``(start, end)`` seconds of a segments cell (``""`` is no segment: all silence)."""
    segments = []
    for part in filter(None, (p.strip() for p in cell.split(";"))):
        start, sep, end = part.partition("-")
        try:
            if not sep:
                raise ValueError
            segment = (float(start), float(end))
        except ValueError:
            raise ValueError(f"segment {part!r} is not 'start-end' in seconds") from None
        if not 0 <= segment[0] < segment[1]:
            raise ValueError(f"segment {part!r} does not satisfy 0 <= start < end")
        segments.append(segment)
    return tuple(sorted(segments))


def _segments_cell(cell: str | None, where: str) -> tuple[tuple[float, float], ...] | None:
    if cell is None:
        return None
    try:
        return parse_segments(cell)
    except ValueError as error:
        raise UserInputError(f"{where}: {error}") from None


def scan_class_folders(
    root: str | os.PathLike, speaker_pattern: str | None = None, on_error: OnError = "raise"
) -> list[Record]:
    """Records of ``root/<label>/**/<file>`` for audio files; speakers from ``speaker_pattern``
    (a regular expression with a ``speaker`` group, matched against the file name) when given.

    Links that lead nowhere are kept, so reading them reports the problem (or skips them, with
    ``on_error="skip"``); a class folder without audio is an error, or a warning with ``skip``.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: audio folder not found")
    pattern = re.compile(speaker_pattern) if speaker_pattern else None
    records = []
    empty = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        found = [
            path
            for path in sorted(class_dir.rglob("*"))
            if path.suffix.lower() in AUDIO_EXTENSIONS and (path.is_symlink() or path.is_file())
        ]
        if not found:
            empty.append(class_dir.name)
        for path in found:
            speaker = None
            if pattern is not None:
                match = pattern.search(path.name)
                speaker = match.group("speaker") if match else None
            records.append(Record(str(path), class_dir.name, speaker))
    if not records:
        raise UserInputError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class subfolders")
    if empty:
        message = f"{root}: class folder(s) without audio files: {empty}"
        if on_error == "raise":
            raise UserInputError(f"{message} (remove them, or on_error='skip' leaves those classes out)")
        warnings.warn(f"{message}; those classes are left out", stacklevel=2)
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
        **kwargs: Any,
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
            **kwargs: Feature, cache, augmentation, batching and split options of
                :class:`~speechrnn.data.audio_base.AudioDataModule`.
        """
        super().__init__(**kwargs)
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

    @property
    def corpus_background_dir(self) -> Path | None:
        """``_background_noise_`` beside the class folders (or the manifest), when there is one: a
        folder whose name starts with ``_`` is no class."""
        folder = (self.manifest.parent if self.manifest is not None else Path(self.root)) / BACKGROUND_FOLDER
        return folder if folder.is_dir() else None

    def load_records(self) -> list[Record]:
        if self.manifest is not None:
            return read_manifest(self.manifest, *self.columns)
        return scan_class_folders(self.root, self.speaker_pattern, self.on_error)  # type: ignore[arg-type]
