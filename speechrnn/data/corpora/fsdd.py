"""``FSDDDataModule``: the Free Spoken Digit Dataset (spoken digits 0-9, 8 kHz), with its official split."""

from __future__ import annotations

import math
import os
import re
import shutil
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from speechrnn.data.audio_base import AudioDataModule
from speechrnn.data.corpora.locations import corpus_root
from speechrnn.data.records import Record
from speechrnn.errors import MissingInputError
from speechrnn.io import atomic_directory

FSDD_TAG = "v1.0.10"
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/{FSDD_TAG}.zip"
FILE_PATTERN = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>.+)_(?P<index>[0-9]+)\.wav$")
OFFICIAL_TEST_INDICES = range(5)
"""The dataset's README: recordings numbered 0-4 are the test set, 5-49 the training set."""

FSDDSplit = Literal["official", "speaker"]
MIN_TRAINING_SPEAKERS = 4
"""With ``split='speaker'`` and ``val_speakers`` unset, a validation speaker is held out only when at
least this many speakers are left to train on: with the shared five-speaker FSDD, leaving a fourth
voice out of training cost more (leave-one-speaker-out mean 91.4 % -> 89.9 %) than honest model
selection gives back, since the kept model is the last epoch's either way."""


def fetch_url(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` (replaced by tests; the only network access here)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out)


def download_fsdd(root: str | os.PathLike, url: str = FSDD_URL) -> Path:
    """Put the dataset's ``recordings/*.wav`` into ``root`` unless it already holds wav files.

    The archive is fetched and extracted into a temporary folder beside ``root``, which is then
    renamed to ``root``: an interrupted download never leaves a half-filled ``root`` behind.
    """
    root = Path(root)
    if has_wav_files(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        # the rename at the end also replaces an empty root folder
        with atomic_directory(root, usable=has_wav_files) as recordings:
            archive = recordings / ".fsdd.zip"
            fetch_url(url, archive)
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.infolist():
                    parts = Path(member.filename).parts
                    # only <top>/recordings/<name>.wav, written by base name (no path from the archive is trusted)
                    if len(parts) == 3 and parts[1] == "recordings" and FILE_PATTERN.match(parts[2]):
                        (recordings / parts[2]).write_bytes(zipped.read(member))
            archive.unlink()
            if not has_wav_files(recordings):
                raise ValueError(f"{url}: the archive has no recordings/<digit>_<speaker>_<index>.wav files")
    except OSError as error:
        if has_wav_files(root):
            raise
        raise OSError(f"{root}: cannot place the downloaded recordings there ({error.strerror or error})") from error
    return root


def has_wav_files(folder: Path) -> bool:
    """Whether ``folder`` holds at least one ``<digit>_<speaker>_<index>.wav`` recording."""
    return folder.is_dir() and any(FILE_PATTERN.match(p.name) for p in folder.iterdir())


def seeded_validation(records: list[Record], fraction: float, seed: int) -> set[int]:
    """Positions (in ``records``) of a validation subset: in every (digit, speaker) group, a seeded
    ``fraction`` of its recordings (rounded half up, and at least one of a group of two or more when
    ``fraction > 0``, so small folders still get a validation split), so validation mirrors training
    in both digit and speaker."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for position, record in enumerate(records):
        groups.setdefault((record.label, record.speaker), []).append(position)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        positions = rng.permutation(groups[key])
        count = math.floor(fraction * len(positions) + 0.5)
        if fraction > 0 and len(positions) >= 2:
            count = max(count, 1)
        chosen.update(int(p) for p in positions[:count])
    return chosen


class FSDDDataModule(AudioDataModule):
    """fsdd: the Free Spoken Digit Dataset, spoken digits 0-9 from a few speakers, 8 kHz mono wav.

    Files are ``{digit}_{speaker}_{index}.wav`` in one folder; other names are ignored. With
    ``split="official"`` recordings 0-4 of every speaker and digit are the test set, as the dataset
    defines, and a seeded ``val_fraction`` of each (digit, speaker) group of the remaining recordings
    (5-49) is held out for validation. With ``split="speaker"`` the ``test_speakers`` (and
    ``val_speakers``, when given) are held out whole, to measure how well the model does on
    voices it never heard; unless ``val_speakers`` says otherwise, validation is one more held-out
    speaker when at least :data:`MIN_TRAINING_SPEAKERS` are left to train on, else a seeded
    ``val_fraction`` of each (digit, speaker) group of the training speakers' recordings.

    The dataset is CC BY-SA 4.0 (https://github.com/Jakobovski/free-spoken-digit-dataset).
    """

    native_sample_rate = 8000

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: FSDDSplit = "official",
        test_speakers: list[str] | None = None,
        val_speakers: list[str] | Literal["auto", "recordings"] | None = None,
        val_fraction: float = 0.1,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: Folder of the ``{digit}_{speaker}_{index}.wav`` files (default
                ``$SPEECHRNN_DATA/fsdd/recordings``, ``SPEECHRNN_DATA`` defaulting to ``data``).
            split: ``official``: recordings 0-4 are the test set (the dataset's own split);
                ``speaker``: ``test_speakers`` are the test set (speaker-independent evaluation).
            test_speakers: With ``split="speaker"`` (required there): speakers held out for testing.
            val_speakers: With ``split="speaker"``: speakers held out for validation (``auto``: one
                training speaker chosen with ``seed``, so early stopping and reports follow accuracy
                on a voice never heard in training; ``recordings``: a seeded ``val_fraction`` of the
                training speakers' recordings). None: ``auto`` when at least
                :data:`MIN_TRAINING_SPEAKERS` speakers are left to train on, else ``recordings``.
            val_fraction: Fraction of each (digit, speaker) group of training recordings held out
                for validation, chosen with ``seed``; unused when ``val_speakers`` are given.
            download: Fetch the dataset (tag ``v1.0.10`` from GitHub) in ``prepare_data`` when
                ``root`` holds no recordings.
            **kwargs: Feature, cache, augmentation and batching options of
                :class:`~speechrnn.data.audio_base.AudioDataModule`.
        """
        super().__init__(val_fraction=val_fraction, test_fraction=0.0, **kwargs)
        if split not in ("official", "speaker"):
            raise ValueError(f"split must be 'official' or 'speaker', got {split!r}")
        if split == "official" and (test_speakers or val_speakers not in (None, "recordings")):
            raise ValueError("test_speakers and val_speakers apply to split='speaker' only")
        if isinstance(val_speakers, str) and val_speakers not in ("auto", "recordings"):
            raise ValueError(f"val_speakers must be a list of speakers, 'auto' or 'recordings', got {val_speakers!r}")
        if split == "speaker" and not test_speakers:
            raise ValueError("split='speaker' needs test_speakers (the speakers held out for testing)")
        self.auto_val_speaker: bool | None = val_speakers == "auto"
        """Whether one training speaker is held out for validation; None: decided from the speakers found."""
        if val_speakers is None and split == "speaker":
            self.auto_val_speaker = None
        val_speakers = None if isinstance(val_speakers, str) else val_speakers
        overlap = sorted(set(test_speakers or []) & set(val_speakers or []))
        if overlap:
            raise ValueError(f"speakers both in test_speakers and val_speakers: {overlap}")
        self.root = Path(root) if root is not None else corpus_root("fsdd", "recordings")
        self.split = split
        self.test_speakers = list(test_speakers or [])
        self.val_speakers = list(val_speakers or [])
        self.download = download

    @property
    def vocabulary(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    @property
    def speakers(self) -> list[str]:
        """Speakers present in ``root``."""
        return sorted({r.speaker for r in self.records if r.speaker})

    def prepare_data(self) -> None:
        if self.download:
            download_fsdd(self.root)
        super().prepare_data()

    def scan(self) -> list[tuple[Path, str, str, int]]:
        """``(path, digit, speaker, index)`` of every recording in ``root``, sorted by file name."""
        if not self.root.is_dir():
            hint = (
                ""
                if self.download
                else (" (download=True fetches it, or point SPEECHRNN_DATA at a folder holding fsdd/recordings)")
            )
            raise MissingInputError(f"{self.root}: FSDD recordings folder not found{hint}")
        found = []
        with os.scandir(self.root) as entries:  # the entries know their type: no stat per file
            for entry in sorted(entries, key=lambda e: e.name):
                match = FILE_PATTERN.match(entry.name)
                if match and entry.is_file():
                    found.append((self.root / entry.name, match["digit"], match["speaker"], int(match["index"])))
        if not found:
            raise ValueError(f"{self.root}: no FSDD recordings named <digit>_<speaker>_<index>.wav")
        return found

    def load_records(self) -> list[Record]:
        found = self.scan()
        present = {speaker for _, _, speaker, _ in found}
        unknown = sorted((set(self.test_speakers) | set(self.val_speakers)) - present)
        candidates = sorted(present - set(self.test_speakers))
        if self.auto_val_speaker is None and not self.val_speakers:
            self.auto_val_speaker = len(candidates) - 1 >= MIN_TRAINING_SPEAKERS
        if self.auto_val_speaker and not self.val_speakers:
            if len(candidates) < 2:
                raise ValueError(f"{self.root}: val_speakers='auto' needs two training speakers, found {candidates}")
            self.val_speakers = [candidates[int(np.random.default_rng(self.seed).integers(len(candidates)))]]
        if unknown:
            raise ValueError(f"{self.root}: no recordings of speakers {unknown} (present: {sorted(present)})")
        if self.split == "official":
            held_out = {i for i, (_, _, _, index) in enumerate(found) if index in OFFICIAL_TEST_INDICES}
        else:
            held_out = {i for i, (_, _, speaker, _) in enumerate(found) if speaker in self.test_speakers}
        splits = {i: "test" for i in held_out}
        rest = [i for i in range(len(found)) if i not in held_out]
        if self.val_speakers:
            splits.update({i: "val" for i in rest if found[i][2] in self.val_speakers})
        else:
            candidates = [Record(str(found[i][0]), found[i][1], found[i][2]) for i in rest]
            val = seeded_validation(candidates, self.val_fraction, self.seed)
            splits.update({rest[p]: "val" for p in val})
        return [
            Record(str(path), digit, speaker, splits.get(i, "train"))
            for i, (path, digit, speaker, _) in enumerate(found)
        ]
