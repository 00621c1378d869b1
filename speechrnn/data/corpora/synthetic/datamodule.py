"""``SyntheticCommandsDataModule``: the embedded default corpus, generated on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from speechrnn.data.audio_base import AudioDataModule
from speechrnn.data.corpora.folder import read_manifest
from speechrnn.data.corpora.synthetic.generator import WORDS, SyntheticCorpusConfig, corpus_is_current, generate_corpus
from speechrnn.data.open_set import BACKGROUND_FOLDER
from speechrnn.data.records import Record

DEFAULT_ROOT = Path("data/synthetic_commands")
OPEN_SET_ROOT = Path("data/synthetic_commands_open_set")
"""Where ``open_set=True`` generates its corpus by default (apart from the default corpus)."""


class SyntheticCommandsDataModule(AudioDataModule):
    """synthetic-commands: formant-synthesised command words from many synthetic speakers.

    Needs no download: ``prepare_data`` generates the corpus deterministically from ``corpus_seed``
    into ``root`` (16 kHz wav files and ``manifest.csv``), and regenerates it only when it is
    missing or its generation parameters changed. Its train/val/test splits are speaker-disjoint
    and come from the manifest. Some words share their sounds in a different order, so only a
    model that reads order can tell them apart.

    With ``open_set=True`` the corpus is a keyword-spotting one: the same speakers also say
    ``other_words`` words that are not commands, and ``_background_noise_/`` holds background
    recordings (babble, hum, pink and brown noise, ``background_seconds`` each); the command words
    are the keywords (unless ``keywords`` says otherwise), the other words ``_unknown_``, and clips
    of the background ``_silence_`` (:mod:`speechrnn.data.open_set`). That corpus has its own
    folder and cache; the default corpus is unchanged.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        num_speakers: int = 30,
        repetitions: int = SyntheticCorpusConfig.repetitions,
        val_speakers: int = 5,
        test_speakers: int = 5,
        corpus_seed: int = 0,
        generation_workers: int | None = None,
        open_set: bool = False,
        other_words: int = 6,
        background_seconds: float = 300.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            root: Where the corpus is generated (default ``data/synthetic_commands``, or
                ``data/synthetic_commands_open_set`` with ``open_set``).
            num_speakers: Synthetic speakers (each differs in pitch, vocal-tract length, rate, loudness).
            repetitions: Clips per speaker and word.
            val_speakers: Speakers held out for validation.
            test_speakers: Speakers held out for testing.
            corpus_seed: Seed of the generator (the corpus is a pure function of its parameters).
            generation_workers: Processes used to generate (default: all cores).
            open_set: Keyword spotting: also render ``other_words`` non-command words and
                ``background_seconds`` of each background recording; the commands are the keywords
                (unless ``keywords`` is given), the other words ``_unknown_``, background clips
                ``_silence_``.
            other_words: With ``open_set``: how many non-command words (at most 8) each speaker also says,
                ``repetitions`` times each.
            background_seconds: With ``open_set``: length of each of the four background recordings.
            **kwargs: Feature, cache, augmentation, open-set (``keywords``, ``unknown_fraction``,
                ``silence_fraction``, ...) and batching options of
                :class:`~speechrnn.data.audio_base.AudioDataModule`.
        """
        self.corpus = SyntheticCorpusConfig(
            num_speakers=num_speakers, repetitions=repetitions, val_speakers=val_speakers, test_speakers=test_speakers,
            seed=corpus_seed, other_words=other_words if open_set else 0,
            background_seconds=background_seconds if open_set else 0.0,
        )  # fmt: skip
        self.generation_workers = generation_workers
        self.open_set_corpus = open_set
        root = Path(root if root is not None else OPEN_SET_ROOT if open_set else DEFAULT_ROOT)
        super().__init__(val_fraction=0.0, test_fraction=0.0, **kwargs)
        self.manifest = root / "manifest.csv"
        self.corpus_root = root

    @property
    def name(self) -> str:
        return f"synthetic_commands-{self.corpus.fingerprint()[:8]}"

    @property
    def vocabulary(self) -> list[str]:
        return sorted(self.corpus.words)

    @property
    def default_keywords(self) -> list[str] | None:
        return sorted(WORDS) if self.open_set_corpus else None

    @property
    def corpus_background_dir(self) -> Path | None:
        return self.corpus_root / BACKGROUND_FOLDER if self.corpus.background_seconds else None

    @property
    def default_silence_seconds(self) -> float:
        return self.corpus.clip_seconds

    def generate(self) -> Path:
        """Generate the corpus unless an identical one is already in ``root``; returns the manifest."""
        return generate_corpus(self.corpus_root, self.corpus, num_workers=self.generation_workers, progress=True)

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()

    def load_records(self) -> list[Record]:
        if not corpus_is_current(self.corpus_root, self.corpus):
            self.generate()
        return read_manifest(self.manifest)
