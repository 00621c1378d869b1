"""``SpeechCommandsDataModule``: Google Speech Commands v1/v2, all words or the 12-class keyword task."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

from speechrnn.data.audio_base import AudioDataModule
from speechrnn.data.corpora.locations import corpus_root
from speechrnn.data.open_set import BACKGROUND_FOLDER, SILENCE, digest

# The open-set names and tools, importable from here as before they were shared by every corpus:
from speechrnn.data.open_set import SILENCE_GAIN_DB as SILENCE_GAIN_DB
from speechrnn.data.open_set import SILENCE_SECONDS as SILENCE_SECONDS
from speechrnn.data.open_set import UNKNOWN as UNKNOWN
from speechrnn.data.open_set import silence_regions as silence_regions
from speechrnn.data.open_set import write_silence_clips as write_silence_clips
from speechrnn.data.records import Record
from speechrnn.errors import ConfigError, MissingInputError

WORDS_V1 = (
    "bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy", "house", "left", "marvin",
    "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two",
    "up", "wow", "yes", "zero",
)  # fmt: skip
WORDS_V2 = (*WORDS_V1, "backward", "follow", "forward", "learn", "visual")
WORDS = {1: WORDS_V1, 2: WORDS_V2}
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The ten keywords of the 12-class task (plus ``_unknown_`` and ``_silence_``)."""
HASH_DIVIDER = "_nohash_"

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


class SpeechCommandsDataModule(AudioDataModule):
    """speech-commands: Google Speech Commands, one-second spoken words at 16 kHz from thousands of
    speakers (v1: 30 words; v2: 35 words), with the official validation and test lists.

    ``task="all"`` classifies every word. ``task="12class"`` is the usual keyword-spotting task:
    the ten words yes, no, up, down, left, right, on, off, stop, go as ``keywords`` of the open set
    every audio corpus has (:mod:`speechrnn.data.open_set`), plus ``_unknown_`` (a seeded sample of
    the other words' recordings, drawn within each split so the official split holds) and
    ``_silence_`` (one-second clips of the ``_background_noise_`` recordings, written once as wav
    files under ``<cache_dir>/_silence_/``; see :func:`~speechrnn.data.open_set.write_silence_clips` for
    how they are split). ``task="all"`` with ``keywords`` spots other words the same way.
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
            seed: Seed of the ``_unknown_`` sample, the ``_silence_`` clips and the batch order.
            **kwargs: Feature, cache, augmentation, open-set (``unknown_fraction``,
                ``silence_fraction``, ``keywords`` with ``task="all"``, ``background_dir``) and batching options of
                :class:`~speechrnn.data.audio_base.AudioDataModule`.
        """
        super().__init__(val_fraction=0.0, test_fraction=0.0, seed=seed, **kwargs)
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version!r}")
        if task not in ("all", "12class"):
            raise ValueError(f"task must be 'all' or '12class', got {task!r}")
        if task == "12class" and self.open_set.keywords is not None:
            raise ConfigError("task='12class' has its own keywords (the ten commands); keywords go with task='all'")
        self.root = Path(root) if root is not None else corpus_root("speech_commands")
        self.version = version
        self.task_name = task
        self.download = download

    @property
    def name(self) -> str:
        return f"speech_commands_v{self.version}"

    @property
    def corpus_dir(self) -> Path:
        return self.root / "SpeechCommands" / corpus_name(self.version)

    @property
    def vocabulary(self) -> list[str]:
        return sorted(WORDS[self.version])

    @property
    def default_keywords(self) -> list[str] | None:
        return list(COMMANDS) if self.task_name == "12class" else None

    @property
    def corpus_background_dir(self) -> Path:
        return self.corpus_dir / BACKGROUND_FOLDER

    def silence_folder(self, description: dict[str, Any], files: list[Path]) -> Path:
        """``<cache_dir>/_silence_/speech_commands_v0.0<version>-<hash of description>``: beside the
        feature caches, never in the corpus folder, which may be a read-only mount."""
        return self.cache_dir / SILENCE / f"{corpus_name(self.version)}-{digest(description)}"

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
