"""``SpeechCommandsDataModule``: Google Speech Commands v1/v2, all words or the 12-class keyword task."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

from speechrnn.data.audio_base import AudioDataModule
from speechrnn.data.corpora.locations import corpus_root
from speechrnn.data.records import Record
from speechrnn.data.splits import SPLITS
from speechrnn.errors import MissingInputError
from speechrnn.io import atomic_directory

WORDS_V1 = (
    "bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house", "left", "marvin",
    "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two",
    "up", "wow", "yes", "zero",
)  # fmt: skip
WORDS_V2 = (*WORDS_V1, "backward", "follow", "forward", "learn", "visual")
WORDS = {1: WORDS_V1, 2: WORDS_V2}
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The ten keywords of the 12-class task (plus ``_unknown_`` and ``_silence_``)."""
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_FOLDER = "_background_noise_"
HASH_DIVIDER = "_nohash_"
SILENCE_SECONDS = 1.0
SILENCE_GAIN_DB = (-20.0, 0.0)
"""Range of the seeded gain applied to each silence clip, so silence comes at varied levels."""

Version = Literal[1, 2]
Task = Literal["all", "12class"]


def corpus_name(version: int) -> str:
    """Archive name of a version, as torchaudio's ``SPEECHCOMMANDS(url=...)`` and the folder use it."""
    return f"speech_commands_v0.0{version}"


def download_speech_commands(root: str | os.PathLike, version: int) -> Path:
    """``<root>/SpeechCommands/speech_commands_v0.0<version>/``, downloaded with torchaudio if missing.

    torchaudio downloads and extracts into ``<root>/.download/``, and the finished folder is then
    renamed into place, so an interrupted download or extraction never looks complete. A fully
    downloaded archive left by an interrupted extraction is reused.
    """
    from torchaudio.datasets import SPEECHCOMMANDS

    target = Path(root) / "SpeechCommands" / corpus_name(version)
    if target.is_dir():
        return target
    staging = Path(root) / ".download"
    shutil.rmtree(staging / "SpeechCommands", ignore_errors=True)  # a partial extraction
    staging.mkdir(parents=True, exist_ok=True)
    SPEECHCOMMANDS(staging, url=corpus_name(version), download=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging / "SpeechCommands" / corpus_name(version), target)
    shutil.rmtree(staging)
    return target


def read_split_list(path: Path) -> set[str]:
    """Relative paths (``<word>/<file>.wav``) listed in ``validation_list.txt`` or ``testing_list.txt``."""
    if not path.is_file():
        raise MissingInputError(f"{path}: official split list not found")
    return {Path(line.strip()).as_posix() for line in path.read_text().splitlines() if line.strip()}


def scan_speech_commands(corpus: Path) -> list[Record]:
    """Every word recording of a Speech Commands folder, with the official split, sorted by path.

    Follows torchaudio's ``SPEECHCOMMANDS`` conventions: files are ``<word>/<speaker>_nohash_<n>.wav``
    (others are ignored), ``_background_noise_`` holds no words, and files named in
    ``testing_list.txt`` or ``validation_list.txt`` are the test or validation split (test first
    when listed in both), everything else is training data.
    """
    if not corpus.is_dir():
        raise MissingInputError(f"{corpus}: Speech Commands folder not found (download=True fetches it)")
    test = read_split_list(corpus / "testing_list.txt")
    val = read_split_list(corpus / "validation_list.txt")
    records = []
    for word_dir in sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for path in sorted(word_dir.glob("*.wav")):
            if HASH_DIVIDER not in path.name:
                continue
            relative = f"{word_dir.name}/{path.name}"
            split = "test" if relative in test else "val" if relative in val else "train"
            records.append(Record(str(path), word_dir.name, path.name.split(HASH_DIVIDER)[0], split))
    if not records:
        raise ValueError(f"{corpus}: no <word>/<speaker>_nohash_<n>.wav recordings")
    return records


def silence_regions(duration: int, counts: dict[str, int], clip: int) -> dict[str, tuple[int, int]] | None:
    """Disjoint ``[start, end)`` sample ranges of one background file for each split that needs clips:
    consecutive regions, each at least one clip long, sharing the rest in proportion to the
    clips each split needs. None when the file is too short to give every such split a region."""
    needed = [split for split in SPLITS if counts.get(split, 0) > 0]
    spare = duration - len(needed) * clip
    if spare < 0:
        return None
    total = sum(counts[split] for split in needed)
    regions, start = {}, 0
    for position, split in enumerate(needed):
        end = duration if position == len(needed) - 1 else start + clip + spare * counts[split] // total
        regions[split] = (start, end)
        start = end
    return regions


def write_silence_clips(
    background_files: list[Path], counts: dict[str, int], folder: Path, seed: int | list[int]
) -> dict[str, list[Path]]:
    """Cut ``counts[split]`` one-second clips per split from the background recordings into ``folder``.

    Each background file is divided by time into one region per split (see :func:`silence_regions`),
    so no sample of background audio is shared between splits while every split hears every kind
    of noise. Each clip comes from a seeded choice of file, a seeded offset inside that file's
    region for the split, and a seeded gain in :data:`SILENCE_GAIN_DB`. The folder is written under
    a temporary name and renamed when complete; an existing folder is reused as is.
    """
    paths = {split: [folder / f"{split}_{i:05d}.wav" for i in range(counts.get(split, 0))] for split in SPLITS}
    if folder.is_dir():
        return paths
    sources = []
    for file in background_files:
        samples, rate = sf.read(file, dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
        clip = round(SILENCE_SECONDS * rate)
        regions = silence_regions(len(mono), counts, clip)
        if regions is not None:
            sources.append((mono, rate, clip, regions))
    if not sources:
        raise ValueError(
            f"background noise files {[str(f) for f in background_files]} are too short to cut "
            f"{SILENCE_SECONDS:g} s silence clips for every split"
        )
    rng = np.random.default_rng(seed)
    with atomic_directory(folder, usable=Path.is_dir) as tmp:
        for split in SPLITS:
            for path in paths[split]:
                mono, rate, clip, regions = sources[int(rng.integers(len(sources)))]
                start, end = regions[split]
                offset = int(rng.integers(start, end - clip + 1))
                gain = 10 ** (rng.uniform(*SILENCE_GAIN_DB) / 20)
                sf.write(tmp / path.name, np.clip(gain * mono[offset : offset + clip], -1, 1), rate)
    return paths


class SpeechCommandsDataModule(AudioDataModule):
    """speech-commands: Google Speech Commands, one-second spoken words at 16 kHz from thousands of
    speakers (v1: 30 words; v2: 35 words), with the official validation and test lists.

    ``task="all"`` classifies every word. ``task="12class"`` is the usual keyword-spotting task:
    the ten words yes, no, up, down, left, right, on, off, stop, go, plus ``_unknown_`` (a seeded
    sample of the other words' recordings, drawn within each split so the official split holds)
    and ``_silence_`` (one-second clips of the ``_background_noise_`` recordings, written once as
    wav files under ``<root>/_silence_/``; see :func:`write_silence_clips` for how they are split).
    Speakers are the part of the file name before ``_nohash_``.

    Data lives in ``<root>/SpeechCommands/speech_commands_v0.0<version>/``, torchaudio's layout.
    The dataset is CC BY 4.0 (https://arxiv.org/abs/1804.03209).
    """

    native_sample_rate = 16000

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        version: Version = 2,
        task: Task = "all",
        download: bool = False,
        silence_fraction: float = 0.1,
        unknown_fraction: float = 0.1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: Folder holding ``SpeechCommands/speech_commands_v0.0<version>/`` (default
                ``$SPEECHRNN_DATA/speech_commands``, ``SPEECHRNN_DATA`` defaulting to ``data``).
            version: 1 (30 words, 65k clips) or 2 (35 words, 105k clips).
            task: ``all``: one class per word; ``12class``: ten keywords, ``_unknown_`` and ``_silence_``.
            download: Fetch the corpus with torchaudio in ``prepare_data`` when it is missing
                (1.4 GB for v1, 2.3 GB for v2).
            silence_fraction: For ``12class``: ``_silence_`` clips per split, as a fraction of that
                split's keyword recordings (rounded up); 0.1 makes ``_silence_`` about as large as
                an average keyword class. 0 drops the class.
            unknown_fraction: For ``12class``: ``_unknown_`` recordings per split, likewise (at most
                all other-word recordings of the split). 0 drops the class.
            seed: Seed of the ``_unknown_`` sample, the ``_silence_`` clips and the batch order.
            **kwargs: Feature, cache, augmentation and batching options of
                :class:`~speechrnn.data.audio_base.AudioDataModule`.
        """
        super().__init__(val_fraction=0.0, test_fraction=0.0, seed=seed, **kwargs)
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version!r}")
        if task not in ("all", "12class"):
            raise ValueError(f"task must be 'all' or '12class', got {task!r}")
        for option, value in (("silence_fraction", silence_fraction), ("unknown_fraction", unknown_fraction)):
            if value < 0:
                raise ValueError(f"{option} must be >= 0, got {value}")
        self.root = Path(root) if root is not None else corpus_root("speech_commands")
        self.version = version
        self.task_name = task
        self.download = download
        self.silence_fraction = silence_fraction
        self.unknown_fraction = unknown_fraction

    @property
    def name(self) -> str:
        return f"speech_commands_v{self.version}"

    @property
    def corpus_dir(self) -> Path:
        return self.root / "SpeechCommands" / corpus_name(self.version)

    @property
    def label_names(self) -> list[str]:
        if self.task_name == "all":
            return sorted(WORDS[self.version])
        extra = [SILENCE] * (self.silence_fraction > 0) + [UNKNOWN] * (self.unknown_fraction > 0)
        return sorted([*COMMANDS, *extra])

    def prepare_data(self) -> None:
        if self.download:
            download_speech_commands(self.root, self.version)
        super().prepare_data()

    def load_records(self) -> list[Record]:
        records = scan_speech_commands(self.corpus_dir)
        if self.task_name == "all":
            unexpected = sorted({r.label for r in records} - set(WORDS[self.version]))
            if unexpected:
                raise ValueError(f"{self.corpus_dir}: words {unexpected} are not Speech Commands v{self.version} words")
            return records
        keywords = [r for r in records if r.label in COMMANDS]
        others = [r for r in records if r.label not in COMMANDS]
        per_split = {split: sum(r.split == split for r in keywords) for split in SPLITS}
        return keywords + self.unknown_records(others, per_split) + self.silence_records(per_split)

    def unknown_records(self, others: list[Record], keywords_per_split: dict[str, int]) -> list[Record]:
        """A seeded sample of other words' recordings, labelled ``_unknown_``, drawn within each split."""
        rng = np.random.default_rng([self.seed, 1])
        chosen = []
        for split in SPLITS:
            pool = [r for r in others if r.split == split]
            count = min(len(pool), math.ceil(self.unknown_fraction * keywords_per_split[split]))
            picks = sorted(rng.choice(len(pool), size=count, replace=False)) if count else []
            chosen += [dataclasses.replace(pool[i], label=UNKNOWN) for i in picks]
        return chosen

    def silence_records(self, keywords_per_split: dict[str, int]) -> list[Record]:
        """``_silence_`` clips cut from the background noise recordings (written on first use)."""
        counts = {split: math.ceil(self.silence_fraction * keywords_per_split[split]) for split in SPLITS}
        if not any(counts.values()):
            return []
        background = sorted((self.corpus_dir / BACKGROUND_FOLDER).glob("*.wav"))
        if not background:
            raise ValueError(f"{self.corpus_dir / BACKGROUND_FOLDER}: no wav files to cut _silence_ clips from")
        description = {
            "counts": counts,
            "seed": self.seed,
            "seconds": SILENCE_SECONDS,
            "gain_db": SILENCE_GAIN_DB,
            "sources": [(f.name, f.stat().st_size) for f in background],
        }
        key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
        folder = self.root / SILENCE / f"{corpus_name(self.version)}-{key}"
        paths = write_silence_clips(background, counts, folder, [self.seed, 2])
        # each silence clip is its own "speaker": per-speaker normalisation normalises it alone
        return [
            Record(str(path), SILENCE, f"{SILENCE}/{path.stem}", split) for split in SPLITS for path in paths[split]
        ]
