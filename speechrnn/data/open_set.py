"""Open-set classes for any audio corpus: keywords, ``_unknown_`` and ``_silence_``.

Keyword spotting classifies clips into a few keywords plus two classes that catch everything else:
``_unknown_`` (speech that is not a keyword: every other label of the corpus, subsampled within
each split) and ``_silence_`` (clips cut from background recordings, with no speech). The policy,
shared by every :class:`~speechrnn.data.audio_base.AudioDataModule`:

* the corpus's records keep their split (assigned first when the corpus has none), so ``_unknown_``
  examples of a split are that split's non-keyword recordings (:func:`sample_unknown`);
* each background recording is divided by time into one region per split
  (:func:`silence_regions`), so no sample of background audio is shared between splits while every
  split hears every kind of noise; ``_silence_`` clips of a split are cut from its regions
  (:func:`write_silence_clips`), and the same regions are the background material of that split
  for anything else, such as test streams (:func:`background_regions`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechrnn.audio_io import AUDIO_EXTENSIONS
from speechrnn.data.records import Record
from speechrnn.data.splits import SPLITS
from speechrnn.errors import ConfigError, MissingInputError, UserInputError
from speechrnn.io import atomic_directory

UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_FOLDER = "_background_noise_"
"""A corpus folder's own background recordings (Speech Commands' layout), when it has them."""
SILENCE_SECONDS = 1.0
"""Length of a ``_silence_`` clip unless the corpus or ``silence_seconds`` says otherwise."""
SILENCE_GAIN_DB = (-20.0, 0.0)
"""Range of the seeded gain applied to each silence clip, so silence comes at varied levels."""


def check_fraction(name: str, value: float | None, optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is in ``[0, 1)`` (or None, when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        none = " (or None)" if optional else ""
        raise ConfigError(f"{name} must be in [0, 1){none}, got {value!r}")


@dataclass(frozen=True)
class OpenSetOptions:
    """The open-set options of an audio DataModule, checked when made.

    Attributes:
        keywords: The labels kept as classes; every other label becomes ``_unknown_``. None: no
            ``_unknown_`` class (unless the corpus has keywords of its own).
        unknown_fraction: ``_unknown_`` recordings per split, at most this fraction of the split's
            keyword recordings (rounded up); None keeps them all; 0 drops the class.
        silence_fraction: ``_silence_`` clips per split, as a fraction of the split's keyword
            recordings (rounded up); 0 drops the class.
        background_dir: Folder of background recordings to cut ``_silence_`` clips from. None: the
            corpus's own background recordings, when keywords are given and it has some.
        silence_seconds: Length of a ``_silence_`` clip; None: the corpus's clip length.
    """

    keywords: tuple[str, ...] | None = None
    unknown_fraction: float | None = 0.1
    silence_fraction: float = 0.1
    background_dir: Path | None = None
    silence_seconds: float | None = None

    def __post_init__(self) -> None:
        check_fraction("unknown_fraction", self.unknown_fraction, optional=True)
        check_fraction("silence_fraction", self.silence_fraction)
        if self.keywords is not None:
            if isinstance(self.keywords, str) or not self.keywords:
                raise ConfigError(f"keywords must be a non-empty list of labels, got {self.keywords!r}")
            keywords = tuple(str(k) for k in self.keywords)
            repeated = sorted({k for k in keywords if keywords.count(k) > 1})
            reserved = [k for k in keywords if k in (UNKNOWN, SILENCE)]
            if repeated or reserved:
                what = f"repeat {repeated}" if repeated else f"name the classes {reserved} they make"
                raise ConfigError(f"keywords must be distinct labels; they {what}")
            object.__setattr__(self, "keywords", keywords)
        if self.silence_seconds is not None and not (
            isinstance(self.silence_seconds, (int, float)) and 0 < self.silence_seconds < math.inf
        ):
            raise ConfigError(f"silence_seconds must be > 0 (or None), got {self.silence_seconds!r}")
        if self.background_dir is not None:
            object.__setattr__(self, "background_dir", Path(self.background_dir))
            background_files(self.background_dir, option="background_dir")


def background_files(folder: str | os.PathLike, option: str | None = None) -> list[Path]:
    """The audio files directly in ``folder`` (suffixes of :data:`~speechrnn.audio_io.AUDIO_EXTENSIONS`),
    sorted; a missing folder or one without audio is an error naming it (and ``option``, when given)."""
    folder = Path(folder)
    where = f"{option} {folder}" if option else str(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{where}: background recordings folder not found")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not found:
        raise UserInputError(f"{where}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) to cut _silence_ clips from")
    return found


def open_set_classes(keywords: Iterable[str], unknown: bool, silence: bool) -> list[str]:
    """Class names, sorted: the keywords, then ``_unknown_`` and ``_silence_`` when asked for."""
    return sorted([*keywords, *[UNKNOWN] * unknown, *[SILENCE] * silence])


def per_split(records: Iterable[Record]) -> dict[str, int]:
    """Number of ``records`` in each split (every split named, zero when empty)."""
    splits = [r.split for r in records]
    return {split: splits.count(split) for split in SPLITS}


def sample_unknown(
    others: Sequence[Record], keywords_per_split: dict[str, int], fraction: float | None, seed: int
) -> list[Record]:
    """A seeded sample of the non-keyword recordings ``others``, relabelled ``_unknown_``, drawn within each
    split: at most ``fraction`` of the split's keyword recordings (rounded up), all of them for None."""
    rng = np.random.default_rng([seed, 1])
    chosen = []
    for split in SPLITS:
        pool = [r for r in others if r.split == split]
        if fraction is None:
            picks: Iterable[int] = range(len(pool))
        else:
            count = min(len(pool), math.ceil(fraction * keywords_per_split[split]))
            picks = sorted(rng.choice(len(pool), size=count, replace=False)) if count else []
        chosen += [dataclasses.replace(pool[i], label=UNKNOWN) for i in picks]
    return chosen


def silence_counts(fraction: float, keywords_per_split: dict[str, int]) -> dict[str, int]:
    """``_silence_`` clips per split: ``fraction`` of the split's keyword recordings, rounded up."""
    return {split: math.ceil(fraction * keywords_per_split[split]) for split in SPLITS}


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


def background_regions(
    files: Sequence[Path], counts: dict[str, int], seconds: float = SILENCE_SECONDS
) -> dict[str, list[tuple[str, int, int]]]:
    """Per split, ``(path, start_sample, end_sample)`` of each background file's region for that split
    (samples at the file's own rate), as :func:`write_silence_clips` divides the files for ``counts``;
    files too short to give every split a region are left out, as there."""
    regions: dict[str, list[tuple[str, int, int]]] = {split: [] for split in SPLITS}
    for file in files:
        info = sf.info(file)
        divided = silence_regions(info.frames, counts, round(seconds * info.samplerate))
        for split, (start, end) in (divided or {}).items():
            regions[split].append((str(file), start, end))
    return regions


def write_silence_clips(
    background_files: list[Path],
    counts: dict[str, int],
    folder: Path,
    seed: int | list[int],
    seconds: float = SILENCE_SECONDS,
) -> dict[str, list[Path]]:
    """Cut ``counts[split]`` clips of ``seconds`` per split from the background recordings into ``folder``.

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
        clip = round(seconds * rate)
        regions = silence_regions(len(mono), counts, clip)
        if regions is not None:
            sources.append((mono, rate, clip, regions))
    if not sources:
        raise UserInputError(
            f"background noise files {[str(f) for f in background_files]} are too short to cut "
            f"{seconds:g} s silence clips for every split"
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


def silence_description(files: Sequence[Path], counts: dict[str, int], seed: int, seconds: float) -> dict:
    """What determines a set of ``_silence_`` clips (their folder's name is a hash of it, :func:`digest`)."""
    return {
        "counts": counts,
        "seed": seed,
        "seconds": seconds,
        "gain_db": SILENCE_GAIN_DB,
        "sources": [(f.name, f.stat().st_size) for f in files],
    }


def digest(description: dict) -> str:
    """Short stable hash of a JSON-able description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


def silence_records(paths: dict[str, list[Path]]) -> list[Record]:
    """Records of written silence clips; each clip is its own "speaker" (``_silence_/<stem>``), so
    per-speaker normalisation normalises it alone."""
    return [Record(str(path), SILENCE, f"{SILENCE}/{path.stem}", split) for split in SPLITS for path in paths[split]]
